#!/usr/bin/env bash
# Build the jobserver image and the example image FROM it, run the example, submit a job of
# the example task and read it back, check the user, the volume and the SIGTERM drain.
# Usage: examples/docker/smoke.sh (uses docker, or podman when there is no docker; ENGINE="podman --flag" to choose)
# Extra options for the engine's build and run commands come from ENGINE_BUILD_ARGS and
# ENGINE_RUN_ARGS (e.g. --build-arg BASE=... for a base image from a local registry).
set -euo pipefail
cd "$(dirname "$0")/../.."
read -r -a engine <<<"${ENGINE:-$(command -v docker || command -v podman)}"
read -r -a build_args <<<"${ENGINE_BUILD_ARGS:-}"
read -r -a run_args <<<"${ENGINE_RUN_ARGS:-}"
port=${PORT:-8765}
name=jobserver-smoke-$$
volume=jobserver-smoke-$$

"${engine[@]}" build "${build_args[@]}" -t jobserver .
"${engine[@]}" build "${build_args[@]}" --build-arg JOBSERVER_IMAGE=jobserver -t jobserver-mytasks examples/docker
"${engine[@]}" volume create "$volume" >/dev/null
cleanup() { "${engine[@]}" rm -f "$name" >/dev/null 2>&1 || true; "${engine[@]}" volume rm "$volume" >/dev/null 2>&1 || true; }
trap cleanup EXIT

start() {
  "${engine[@]}" run -d --name "$name" "${run_args[@]}" -p "127.0.0.1:$port:8000" -v "$volume:/data" jobserver-mytasks >/dev/null
  for _ in $(seq 100); do curl -fs "127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.2; done
  "${engine[@]}" logs "$name"; echo "smoke: the server did not answer" >&2; exit 1
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

start
echo "version: $("${engine[@]}" exec "$name" jobserver --version)"
echo "user: $("${engine[@]}" exec "$name" id -un) (uid $("${engine[@]}" exec "$name" id -u))"
[ "$("${engine[@]}" exec "$name" id -u)" != 0 ] || { echo "smoke: runs as root" >&2; exit 1; }
id=$(curl -fs "127.0.0.1:$port/jobs" -H 'content-type: application/json' \
  -d '{"task": "mytasks.describe_size", "args": {"size_bytes": 3000000}}' | field '["id"]')
result=$(curl -fs "127.0.0.1:$port/jobs/$id?wait=10" | field '["result"]')
echo "submitted $id, read back: $result"
[ "$result" = "3.0 MB" ] || { echo "smoke: unexpected result" >&2; exit 1; }

# SIGTERM while a job runs: it finishes within the grace period and the server exits 0
slow=$(curl -fs "127.0.0.1:$port/jobs" -H 'content-type: application/json' \
  -d '{"task": "jobserver.examples.sleep", "args": {"seconds": 2, "steps": 2}}' | field '["id"]')
for _ in $(seq 50); do
  [ "$(curl -fs "127.0.0.1:$port/jobs/$slow" | field '["status"]')" = running ] && break; sleep 0.1
done
"${engine[@]}" stop -t 40 "$name" >/dev/null
code=$("${engine[@]}" inspect "$name" --format '{{.State.ExitCode}}')
echo "stopped with SIGTERM: exit code $code"
[ "$code" = 0 ] || { echo "smoke: exit code $code" >&2; exit 1; }
"${engine[@]}" rm "$name" >/dev/null

# a new container on the same volume still has both jobs, finished
start
statuses=$(curl -fs "127.0.0.1:$port/jobs" | python3 -c 'import json,sys; print(" ".join(j["status"] for j in json.load(sys.stdin)["jobs"]))')
echo "after a restart on the same volume: $statuses"
[ "$statuses" = "completed completed" ] || { echo "smoke: jobs lost or unfinished" >&2; exit 1; }
echo "smoke: ok"
