"""Agent workflows on the real server process, killed with SIGKILL while a job sleeps,
waits for a signal, or gathers its children: after each restart the steps before the
wait ran once, the children were spawned once, and `attempts` did not grow."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import start_server
from tests.helpers import finished, has_line, submit, wait_until

pytestmark = pytest.mark.e2e


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_sleep_survives_a_sigkill_with_its_wake_up_time(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    c = srv.client()
    marks = tmp_path / "marks"
    job_id = submit(c, "tests.e2e_tasks.nap", {"path": str(marks), "seconds": 5})
    parked = wait_until(lambda: (j := c.get(f"/jobs/{job_id}").json())["status"] == "waiting" and j, 60)
    srv.kill()
    srv.restart()
    after = c.get(f"/jobs/{job_id}").json()
    if after["status"] == "waiting":  # unless the restart took longer than the sleep
        assert after["waiting_for"] == parked["waiting_for"]
    job = finished(c, job_id, 60)
    assert job["status"] == "completed" and job["attempts"] == 1, job
    assert job["finished_at"] >= parked["waiting_for"]["until"]
    assert lines(marks) == ["step 1", "step 2"]


def test_signal_wait_survives_a_sigkill(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    c = srv.client()
    marks = tmp_path / "marks"
    job_id = submit(c, "tests.e2e_tasks.approval", {"path": str(marks)})
    wait_until(lambda: c.get(f"/jobs/{job_id}").json()["status"] == "waiting", 60)
    srv.kill()
    srv.restart()
    assert c.get(f"/jobs/{job_id}").json()["status"] == "waiting"
    assert c.post(f"/jobs/{job_id}/signals/approve", json={"ok": 1}).status_code == 202
    job = finished(c, job_id, 60)
    assert job["status"] == "completed" and job["attempts"] == 1, job
    assert job["result"] == {"answer": {"ok": 1}, "attempt": 1}
    assert lines(marks) == ["step 1", "step 2"]


def test_gather_survives_sigkills_and_children_are_spawned_once(tmp_path: Path) -> None:
    # The held children run on threads of their own: with no thread left over, the rescued
    # parent would wait behind them for the hold to go, and never park again before it.
    srv = start_server(tmp_path, {"workers": {"threads": 6}})
    c = srv.client()
    marks, hold, pause = tmp_path / "marks", tmp_path / "hold", tmp_path / "pause"
    hold.touch()
    pause.touch()
    job_id = submit(
        c, "tests.e2e_tasks.fan_out", {"path": str(marks), "n": 4, "hold": str(hold), "pause": str(pause)}
    )
    spawned = Path(str(pause) + ".spawned")
    wait_until(lambda: has_line(spawned), 60, message="the children to be spawned")
    srv.kill()  # the parent runs between its spawn and its gather
    pause.unlink()
    srv.restart()
    job = wait_until(lambda: (j := c.get(f"/jobs/{job_id}").json())["status"] == "waiting" and j, 60)
    assert job["waiting_for"]["kind"] == "children"
    assert job["attempts"] == 2  # the cut run counts as an attempt, as any crash does
    srv.kill()  # the parent waits for its children
    srv.restart()
    hold.unlink()
    job = finished(c, job_id, 60)
    assert job["status"] == "completed" and job["attempts"] == 2, job
    assert job["result"]["results"] == [0, 1, 4, 9] and job["result"]["tail"] == 16
    runs = lines(spawned)  # every run of the parent past its spawn got the same children
    assert len(runs) >= 3 and set(runs) == {",".join(job["result"]["ids"])}
    children = c.get("/jobs", params={"parent": job_id}).json()["jobs"]
    assert len(children) == 5  # four spawned once, and the tail
