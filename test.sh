#!/usr/bin/env bash
# Set up .venv from the lock file and run ./check (lint, format, types, import rules, then the
# whole test suite with coverage); arguments go to pytest. The venv is rebuilt only when
# requirements/test.lock, pyproject.toml or python3 changed since it was installed.
# The dashboard test drives Debian's headless chromium, and the README's backup line is run by
# the sqlite3 shell; on Debian as root both are installed when missing. The PostgreSQL tests use
# the server on 127.0.0.1:5432 (set JOBSERVER_TEST_PG_URL to point elsewhere).
set -euo pipefail
cd "$(dirname "$0")"
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -x /usr/bin/sqlite3 ] || missing="$missing sqlite3"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # shellcheck disable=SC2086 # one word per package
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
stamp="$(sha256sum requirements/test.lock pyproject.toml) $(python3 -VV)"
if [ "$(cat .venv/installed 2>/dev/null)" != "$stamp" ]; then
  echo "installing requirements/test.lock into .venv"
  rm -f .venv/installed
  if ! python3 -m venv --clear .venv 2>/dev/null; then
    # Debian's python3 makes venvs only with its python3-venv package
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv --clear .venv
  fi
  pip=(.venv/bin/pip -q --disable-pip-version-check)
  "${pip[@]}" install --require-hashes -r requirements/test.lock
  "${pip[@]}" install --no-deps --no-build-isolation -e .
  "${pip[@]}" check
  echo "$stamp" >.venv/installed
fi
exec ./check "$@"
