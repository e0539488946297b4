"""The dashboard's job list under load, in headless chromium against the real server: what a
list poll downloads when jobs return large results, a list that kept growing by itself after a
bulk retry, a job streaming events that re-rendered every row on each event, the parent filter,
and what the page says while the server drains."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Response, Route, expect

from tests import test_dashboard as dashboard
from tests.e2e import start_server
from tests.helpers import has_line, wait_until
from tests.inproc import ServedApp
from tests.test_dashboard import ADD, open_job, row, submit, wait_finished
from tests.test_dashboard_fixes import list_polls

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# the browser, page and HTTP client fixtures of the dashboard tests
browser = dashboard.browser
page = dashboard.page
client = dashboard.client
server = dashboard.server

BLOCK = "tests.e2e_tasks.block_until_file"
FAIL_NOW = "tests.e2e_tasks.fail_now"  # fails at its first attempt, never retried


def is_list_poll(resp: Response) -> bool:
    return "/jobs?" in resp.url and "parent=" not in resp.url and resp.request.method == "GET"


def test_a_list_poll_leaves_out_large_results_and_the_pane_still_shows_them(
    server: ServedApp, client: httpx.Client, page: Page, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    release.touch()
    pad = 200_000  # each job's result: 200 kB
    jobs = [
        submit(client, BLOCK, {"started": str(tmp_path / "started"), "release": str(release), "pad": pad})
        for _ in range(5)
    ]
    for job in jobs:
        assert wait_finished(client, job["id"])["status"] == "completed"

    page.goto(server.url)
    expect(row(page, jobs[0]["id"])).to_have_attribute("data-status", "completed")
    for _ in range(2):
        with page.expect_response(is_list_poll) as answer:
            pass
        resp = answer.value
        assert "fields=summary" in resp.url, resp.url
        body = resp.body()
        # five rows of a few hundred bytes each, not five results of 200 kB
        assert len(body) < 20_000, (resp.url, len(body))

    open_job(page, jobs[0]["id"])  # the pane reads the whole job
    result = page.locator("#detail-result")
    expect(result).to_contain_text("released")
    expect(result.locator(".json-note")).to_contain_text("200 kB of JSON")  # past 100 kB: its start, as text
    result.get_by_role("button", name="Show all").click()
    expect(result.locator(".json-note")).to_contain_text("all of it")
    assert len(result.inner_text()) > pad


def test_the_list_keeps_its_length_after_rows_leave_and_come_back(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    """A retry of every failed job: the poll just after it read the few still failed (the
    oldest), and the polls after that, once the retried ones had failed again, kept those as if
    "load more" had brought them, asking for more rows each time (50 became 800)."""
    failed = [submit(client, FAIL_NOW, {})["id"] for _ in range(6)]  # oldest first
    for job_id in failed:
        assert wait_finished(client, job_id)["status"] == "failed"

    page.goto(f"{server.url}/?status=failed&page_size=2")
    rows = page.locator("#jobs-body tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#load-more")).to_be_visible()

    assert client.post(f"/tasks/{FAIL_NOW}/pause").status_code == 200  # the retried ones wait
    retried = client.post("/jobs/retry", json={"ids": failed[1:]})
    assert retried.status_code == 200 and retried.json()["count"] == 5, retried.text
    expect(rows).to_have_count(1)  # only the oldest is still failed
    expect(row(page, failed[0])).to_be_visible()

    assert client.post(f"/tasks/{FAIL_NOW}/resume").status_code == 200
    for job_id in failed[1:]:
        assert wait_finished(client, job_id)["status"] == "failed"
    list_polls(page, 2)
    expect(rows).to_have_count(2)  # the two newest, as asked for
    assert [r.get_attribute("data-job-id") for r in rows.all()] == [failed[5], failed[4]]
    expect(page.locator("#load-more")).to_be_visible()
    page.locator("#load-more").click()
    expect(rows).to_have_count(4)
    list_polls(page, 1)
    expect(rows).to_have_count(4)


def test_an_event_of_the_open_job_repaints_its_own_row_only(
    server: ServedApp, client: httpx.Client, page: Page, tmp_path: Path
) -> None:
    """With a job open that streams events, each event re-rendered every row of the list (the
    dates of 500 rows formatted again, several times a second). Now only the job's own row is."""
    batch = client.post(
        "/jobs/batch", json={"jobs": [{"task": ADD, "args": {"a": i, "b": 0}} for i in range(60)]}
    )
    assert batch.status_code == 202, batch.text
    for job in batch.json()["jobs"][-1:]:
        wait_finished(client, job["id"])
    release = tmp_path / "release"
    busy = submit(client, "tests.e2e_tasks.chatty", {"updates": 3, "logs": 0, "release": str(release)})
    page.goto(f"{server.url}/?page_size=100")
    rows = page.locator("#jobs-body tr")
    expect(rows).to_have_count(61)
    expect(row(page, busy["id"])).to_have_attribute("data-status", "running")
    open_job(page, busy["id"])
    expect(page.locator("#detail-progress-text")).to_contain_text("3/3")
    expect(page.locator("#stream-state")).to_have_attribute("data-stream", "live")

    held: list[Route] = []
    # list polls are held unanswered from here: what changes rows now is the job's stream
    page.route(lambda url: "/jobs?" in url, lambda route: held.append(route))
    page.evaluate(
        """(id) => {
            window.touchedRows = new Set();
            new MutationObserver((records) => {
                for (const r of records) {
                    const tr = (r.target.nodeType === 1 ? r.target : r.target.parentElement)?.closest('tr[data-job-id]');
                    if (tr && tr.dataset.jobId !== id) window.touchedRows.add(tr.dataset.jobId);
                }
            }).observe(document.getElementById('jobs-body'),
                       { subtree: true, attributes: true, characterData: true, childList: true });
        }""",
        busy["id"],
    )
    release.touch()  # the job completes: a status event on its stream
    expect(row(page, busy["id"])).to_have_attribute("data-status", "completed")
    expect(page.locator("#detail-status")).to_have_text("completed")
    touched = page.evaluate("() => [...window.touchedRows]")
    assert touched == [], f"{len(touched)} other rows re-rendered by one event"


def test_a_parent_filter_in_the_url_lists_its_children_and_the_pane_links_parent_and_children(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    """`?parent=ID` was ignored, and the pane's Parent was plain text."""
    parent = submit(client, "tests.e2e_tasks.fan_out", {"path": "", "n": 2})
    other = submit(client, ADD, {"a": 1, "b": 2})
    wait_finished(client, parent["id"])
    wait_finished(client, other["id"])
    kids = [k["id"] for k in client.get("/jobs", params={"parent": parent["id"]}).json()["jobs"]]
    assert len(kids) == 3

    page.goto(f"{server.url}/?parent={parent['id']}")
    rows = page.locator("#jobs-body tr")
    expect(rows).to_have_count(3)
    assert sorted(r.get_attribute("data-job-id") or "" for r in rows.all()) == sorted(kids)
    expect(page.locator("#filter-parent")).to_be_visible()
    expect(page.locator("#filter-parent-id")).to_have_attribute("title", parent["id"])
    expect(page.locator("#bulk-all")).to_be_disabled()  # the bulk actions take no parent filter

    open_job(page, kids[0])
    page.locator("#detail-parent").click()  # the child's Parent opens the parent
    expect(page.locator("#detail")).to_have_attribute("data-job-id", parent["id"])

    page.locator("#filter-parent-clear").click()
    expect(rows).to_have_count(5)
    expect(page.locator("#filter-parent")).to_be_hidden()
    expect(page).not_to_have_url(re.compile("parent="))

    page.locator("#detail-children-filter").click()  # the open parent's children, as a list
    expect(rows).to_have_count(3)
    expect(page).to_have_url(re.compile(f"[?&]parent={parent['id']}"))


def test_the_pill_says_draining_while_the_server_drains_and_live_once_it_is_back(
    tmp_path: Path, page: Page
) -> None:
    """During a SIGTERM drain every read still answers, so the page said "live" until a submit was refused."""
    srv = start_server(tmp_path, config={"workers": {"shutdown_grace_seconds": 30}})
    started, release = tmp_path / "started", tmp_path / "release"
    job = submit(srv.client(), BLOCK, {"started": str(started), "release": str(release)})
    wait_until(lambda: has_line(started), message="the job to start")
    page.goto(srv.url)
    pill = page.locator("#conn-state")
    expect(row(page, job["id"])).to_have_attribute("data-status", "running")
    expect(pill).to_have_attribute("data-state", "live")

    srv.terminate()  # the running job holds the server in its drain
    expect(pill).to_have_attribute("data-state", "draining")
    expect(pill).to_have_text("draining")
    expect(page.locator("#submit-draining")).to_be_visible()
    expect(page.locator("#submit-btn")).to_be_disabled()

    release.touch()
    assert srv.wait_exit() == 0
    srv.restart()
    expect(pill).to_have_attribute("data-state", "live")
    expect(page.locator("#submit-draining")).to_be_hidden()
    expect(page.locator("#submit-btn")).to_be_enabled()
