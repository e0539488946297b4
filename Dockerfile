# jobserver: one process, one SQLite file in /data.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JOBSERVER_SERVER_HOST=0.0.0.0 \
    JOBSERVER_DATABASE_URL=sqlite:////data/jobserver.db

WORKDIR /app
COPY pyproject.toml README.md requirements/run.lock ./
COPY jobserver ./jobserver
# the locked dependencies (exact versions, hashes checked), then the package alone
RUN pip install --no-cache-dir --require-hashes -r run.lock \
    && pip install --no-cache-dir --no-deps --no-build-isolation . && useradd --create-home --uid 10001 jobserver \
    && mkdir /data && chown jobserver:jobserver /data

USER jobserver
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
# SIGTERM drains: running jobs get workers.shutdown_grace_seconds to finish.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "jobserver"]
