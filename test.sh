#!/usr/bin/env bash
# Set up a virtualenv with the pinned dependencies and run the whole test suite.
# The dashboard test drives Debian's headless chromium; on Debian as root it is
# installed when missing. The PostgreSQL tests use the server on 127.0.0.1:5432
# (set JOBSERVER_TEST_PG_URL to point elsewhere).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/pytest "$@"
