# jobserver: the server with its locked dependencies in a venv, run by a non-root user; the
# database lives in the /data volume, task modules in /app (the working directory, importable).
# Add your own tasks and their dependencies in an image of your own: examples/docker/.
#
#   docker build -t jobserver .
#   docker run -p 8000:8000 -v jobdata:/data jobserver
#
# BASE: any Debian-based image with CPython 3.11 and its venv module (the locks are for 3.11).
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/jobserver \
    PATH=/opt/jobserver/bin:$PATH \
    PYTHONPATH=/app \
    JOBSERVER_SERVER_HOST=0.0.0.0 \
    JOBSERVER_DATABASE_URL=sqlite:////data/jobserver.db

# The locked dependencies first (exact versions, hashes checked): this layer is kept across code changes.
COPY requirements/run.lock /tmp/run.lock
RUN python3 -m venv /opt/jobserver \
    && pip install --no-cache-dir --disable-pip-version-check --require-hashes -r /tmp/run.lock \
    && rm /tmp/run.lock

# Then the package alone, built with the locked backend.
COPY pyproject.toml README.md LICENSE MANIFEST.in /tmp/src/
COPY jobserver /tmp/src/jobserver
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation /tmp/src \
    && rm -rf /tmp/src \
    && useradd --create-home --uid 10001 --user-group jobserver \
    && mkdir -p /data /app \
    && chown jobserver:jobserver /data

USER jobserver
WORKDIR /app
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# SIGTERM drains: no new jobs, running jobs get workers.shutdown_grace_seconds to finish, the rest
# are put back, exit 0. Give the container's stop timeout more than that grace period.
STOPSIGNAL SIGTERM
CMD ["jobserver"]
