#!/usr/bin/env bash
# Regenerate the lock files from the version ranges in pyproject.toml, for CPython 3.11 on
# Linux x86_64, with the sha256 of every release file:
#   test.lock  the test environment (what ./test.sh installs): [project] dependencies + the
#              "test" and "bench" extras + the build backend
#              (requirements/build.in: the project is installed without build isolation)
#   run.lock   running the server: [project] dependencies + the build backend, at the versions
#              test.lock has
# Versions already in the locks are kept where the ranges allow: pass --upgrade for the newest
# releases, or --upgrade-package NAME (extra arguments go to both compiles).
# Uses uv 0.13.8: the one on PATH if it is that version, else one installed in a temporary venv
# (or set UV=/path/to/uv).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${UV:-}" ]; then
  if [ "$(uv --version 2>/dev/null | cut -d' ' -f2)" = 0.13.8 ]; then
    UV=uv
  else
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m venv "$tmp" && "$tmp/bin/pip" install -q --disable-pip-version-check uv==0.13.8
    UV=$tmp/bin/uv
  fi
fi
flags=(--python-version 3.11 --python-platform x86_64-unknown-linux-gnu --generate-hashes
       --custom-compile-command requirements/lock.sh --quiet)
"$UV" pip compile pyproject.toml requirements/build.in --extra test --extra bench "${flags[@]}" -o requirements/test.lock "$@"
"$UV" pip compile pyproject.toml requirements/build.in -c requirements/test.lock "${flags[@]}" -o requirements/run.lock "$@"
