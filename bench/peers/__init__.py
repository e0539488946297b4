"""The designs jobserver is measured against, written for the bench: the seed article's
first design (FastAPI `BackgroundTasks` with an in-memory dict) and its second (FastAPI
with Celery on Redis). Each serves the same routes jobserver does for the bench's
figures (`POST /jobs`, `GET /jobs/{id}?wait=`, `/healthz`) and runs the same two task
bodies (`noop`, `now`), so one load generator drives all three. They need the bench
extra (FastAPI, Celery, redis); jobserver itself never imports them."""
