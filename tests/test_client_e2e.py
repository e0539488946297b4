"""The SDK against the server process while it drains on SIGTERM."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobserver.client.sdk import Client
from jobserver.core.errors import DrainingError
from tests.e2e import start_server
from tests.helpers import has_line, wait_until

pytestmark = pytest.mark.e2e

ADD = "jobserver.examples.add"
WAIT_S = 30.0


def test_submit_while_draining_raises_draining_error(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    started, release = tmp_path / "started", tmp_path / "release"
    try:
        with Client(srv.url) as c:
            job = c.submit(
                "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)}
            )
            wait_until(lambda: has_line(started), WAIT_S, message="the job to start")
            srv.terminate()

            def refused() -> DrainingError | None:
                try:
                    c.submit(ADD, {"a": 1, "b": 1})
                except DrainingError as exc:
                    return exc
                return None

            exc = wait_until(refused, WAIT_S, message="submissions to be refused")
            assert exc.status_code == 503 and exc.retry_after is not None
            assert c.get(job["id"])["status"] == "running"  # reads still work while draining
            release.touch()
        assert srv.wait_exit(WAIT_S) == 0
    finally:
        srv.stop()
