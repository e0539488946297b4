#!/usr/bin/env bash
# Bring up compose.yaml (PostgreSQL and two nodes) and check what it promises:
#  - both nodes get ready;
#  - 20 jobs submitted through node one run on both nodes;
#  - node two is SIGKILLed while it runs jobs: node one recovers them once their lease expires
#    (workers.lease_seconds, 30 s) and every job completes;
#  - node one is stopped with SIGTERM while a job runs: the job finishes and the node exits 0;
#  - node two, started again, reads that job back.
# Takes about a minute and a half (the lease); it is not part of the test suite.
#
# Usage: examples/compose/smoke.sh [more compose files, e.g. examples/compose/compose.offline.yaml]
#   COMPOSE  the compose command (default: `docker compose` when a docker daemon answers, else
#            `podman-compose`, else `podman compose`)
#   ENGINE   the container engine behind it, for kill and inspect (default: docker or podman, to match)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
files=(-f "$here/compose.yaml")
for extra in "$@"; do files+=(-f "$(cd "$(dirname "$extra")" && pwd)/$(basename "$extra")"); done
if [ -z "${COMPOSE:-}" ]; then
  if docker info >/dev/null 2>&1; then COMPOSE="docker compose"
  elif command -v podman-compose >/dev/null; then COMPOSE=podman-compose
  else COMPOSE="podman compose"; fi
fi
read -r -a compose_cmd <<<"$COMPOSE"
case "$COMPOSE" in docker*) default_engine=docker ;; *) default_engine=podman ;; esac
read -r -a engine <<<"${ENGINE:-$default_engine}"
project=jobserver-smoke-$$
compose() { "${compose_cmd[@]}" -p "$project" "${files[@]}" "$@"; }

key=smoke-$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export JOBSERVER_AUTH_API_KEYS="[\"$key\"]"
JOBSERVER_WEBHOOKS_SECRET=whsec_$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(24)).decode())')
export JOBSERVER_WEBHOOKS_SECRET
one=127.0.0.1:8001
two=127.0.0.1:8002
jobs=20

container() {  # the container of a service, by the labels both docker compose and podman-compose set
  "${engine[@]}" ps -a -q --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1"
}
cleanup() {
  # the nodes' anonymous /data volumes too (podman-compose's `down -v` keeps them)
  local volumes="" id
  for service in node-one node-two; do
    id=$(container "$service" 2>/dev/null || true)
    [ -z "$id" ] || volumes+=" $("${engine[@]}" inspect "$id" --format '{{range .Mounts}}{{.Name}} {{end}}')"
  done
  compose down -v >/dev/null 2>&1 || true
  # shellcheck disable=SC2086  # one volume name per word
  [ -z "${volumes// /}" ] || "${engine[@]}" volume rm $volumes >/dev/null 2>&1 || true
}
trap cleanup EXIT
fail() { echo "smoke: $*" >&2; compose logs >&2 || true; exit 1; }

api() { curl -fsS -H "authorization: Bearer $key" "$@"; }
json() { python3 -c "import json,sys; d = json.load(sys.stdin); print($1)"; }
count() { api "$one/jobs?status=$1&limit=500" | json 'len(d["jobs"])'; }
# a counter of one node's /metrics, summed over the series whose labels include $3 (counters are per process)
metric() {
  api "$1/metrics" | python3 -c '
import sys
name, labels = sys.argv[1], sys.argv[2]
print(int(sum(float(line.rsplit(" ", 1)[1]) for line in sys.stdin
              if line.startswith(name + "{") and labels in line)))' "$2" "$3"
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds, at most SECONDS
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 0.2
  done
}
ready() { api "$1/readyz"; }
submit() { api "$one/jobs" -H 'content-type: application/json' -d "$1" | json 'd["id"]'; }
status_is() { [ "$(api "$one/jobs/$1" | json 'd["status"]')" = "$2" ]; }

start=$SECONDS
compose up -d --build || fail "compose up failed"
wait_for 180 "node one to be ready" ready "$one"
wait_for 60 "node two to be ready" ready "$two"
echo "up: both nodes ready after $((SECONDS - start)) s"

# 20 jobs of 4 s through node one; each node runs 4 at once (workers.threads)
for _ in $(seq "$jobs"); do submit '{"task": "jobserver.examples.sleep", "args": {"seconds": 4, "steps": 8}}' >/dev/null; done
# node one runs at most 4: with 6 running node two holds at least 2; once it has also finished one, kill it
node_two_busy() {
  [ "$(count running)" -gt 5 ] && [ "$(metric "$two" jobserver_jobs_finished_total 'status="completed"')" -ge 1 ]
}
wait_for 60 "node two to run jobs" node_two_busy
running=$(count running)
"${engine[@]}" kill "$(container node-two)" >/dev/null
killed_at=$SECONDS
echo "node two SIGKILLed with $running jobs running across both nodes (node one runs at most 4)"

all_completed() { [ "$(count completed)" = "$jobs" ]; }
wait_for 120 "every job to complete" all_completed
on_one=$(metric "$one" jobserver_jobs_finished_total 'status="completed"')
rescued=$(metric "$one" jobserver_jobs_rescued_total 'task=')
second=$(api "$one/jobs?status=completed&limit=500" | json 'sum(j["attempts"] > 1 for j in d["jobs"])')
echo "all $jobs completed $((SECONDS - killed_at)) s after the kill: node one completed $on_one," \
  "node two $((jobs - on_one)) before it was killed; node one rescued $rescued of node two's jobs," \
  "$second jobs completed on a second attempt"
[ "$((jobs - on_one))" -ge 1 ] || fail "node two completed no job"
{ [ "$rescued" -ge 1 ] && [ "$second" = "$rescued" ]; } || fail "node two's jobs were not recovered by node one"

# SIGTERM while a job runs: the job finishes within the grace period and the node exits 0
slow=$(submit '{"task": "jobserver.examples.sleep", "args": {"seconds": 3, "steps": 3}}')
wait_for 30 "the job to run" status_is "$slow" running
compose stop node-one >/dev/null 2>&1
code=$("${engine[@]}" inspect "$(container node-one)" --format '{{.State.ExitCode}}')
echo "node one stopped with SIGTERM: exit code $code"
[ "$code" = 0 ] || fail "node one exited $code"

compose start node-two >/dev/null 2>&1
wait_for 60 "node two to be ready again" ready "$two"
drained=$(api "$two/jobs/$slow" | json 'd["status"], d["attempts"]')
echo "node two, started again, reads the job node one drained: $drained"
[ "$drained" = "completed 1" ] || fail "the drained job did not finish on its first attempt"
echo "smoke: ok ($((SECONDS - start)) s)"
