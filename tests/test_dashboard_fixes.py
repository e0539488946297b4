"""Defects an operator's session found in the dashboard, in headless chromium against the real
server: a long error message that pushed the pane sideways, the keyboard on a row's checkbox and
on the children tree, a refused Pause that said nothing, a deleted job left open with its
actions, a children tree that asked the server once per child on every poll, webhook deliveries
that did not say which event they were for, a schedule's next run in the browser's zone beside a
cron in another, stale rows under the API-key banner after a restart turned auth on, and a
finished job read twice when its link was opened.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect

from tests import test_dashboard as dashboard
from tests.e2e import Server, start_server
from tests.helpers import write_config
from tests.receiver import Receiver, Reply
from tests.test_dashboard import ADD, FAIL, enter_api_key, open_job, row, submit, wait_finished

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

NOOP = "jobserver.examples.noop"
# the browser, page and HTTP client fixtures of the dashboard tests
browser = dashboard.browser
page = dashboard.page
client = dashboard.client


def test_a_long_unbroken_error_message_wraps_inside_the_error_box(
    server: Server, client: httpx.Client, page: Page
) -> None:
    job = submit(client, FAIL, {"message": "E" * 400})
    assert wait_finished(client, job["id"])["status"] == "failed"
    page.goto(server.url)
    open_job(page, job["id"])
    expect(page.locator("#detail-error-message")).to_have_text("E" * 400)
    widths = page.evaluate(
        """() => {
            const body = document.querySelector('.detail-body');
            const box = document.querySelector('#detail-error-section .error-box');
            return [body.scrollWidth, body.clientWidth, box.scrollWidth, box.clientWidth];
        }"""
    )
    body_scroll, body_client, box_scroll, box_client = widths
    assert body_scroll <= body_client, widths  # the pane does not scroll sideways
    assert box_scroll <= box_client, widths  # and the message stays inside the red box


def test_space_on_a_rows_checkbox_ticks_it_and_leaves_the_detail_closed(
    server: Server, client: httpx.Client, page: Page
) -> None:
    job = submit(client, ADD, {"a": 1, "b": 2})
    wait_finished(client, job["id"])
    page.goto(server.url)
    r = row(page, job["id"])
    expect(r).to_have_attribute("data-status", "completed")
    box = r.locator("input.sel")
    r.focus()
    page.keyboard.press("Tab")  # from the row to its checkbox
    expect(box).to_be_focused()
    page.keyboard.press("Space")
    expect(box).to_be_checked()
    expect(page.locator("#bulk-count")).to_have_text("1 selected")
    expect(page.locator("#detail")).to_be_hidden()
    page.keyboard.press("Space")
    expect(box).not_to_be_checked()
    r.focus()
    page.keyboard.press("Enter")  # the row itself still opens with the keyboard
    expect(page.locator("#detail")).to_have_attribute("data-job-id", job["id"])


def test_children_in_the_tree_open_with_enter_and_space(
    server: Server, client: httpx.Client, page: Page
) -> None:
    parent = submit(client, "tests.e2e_tasks.fan_out", {"path": "", "n": 2})
    wait_finished(client, parent["id"])
    kids = client.get("/jobs", params={"parent": parent["id"]}).json()["jobs"]
    assert len(kids) == 3
    page.goto(server.url)
    open_job(page, parent["id"])
    nodes = page.locator("#detail-children li[data-job-id] > .node")
    expect(nodes).to_have_count(3)
    first = page.locator(f'#detail-children li[data-job-id="{kids[0]["id"]}"] > .node')
    first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_have_attribute("data-job-id", kids[0]["id"])
    expect(page.locator("#detail-id")).to_have_text(kids[0]["id"])

    open_job(page, parent["id"])
    second = page.locator(f'#detail-children li[data-job-id="{kids[1]["id"]}"] > .node')
    second.focus()
    page.keyboard.press("Space")
    expect(page.locator("#detail")).to_have_attribute("data-job-id", kids[1]["id"])


def test_a_refused_pause_says_why_next_to_the_panel(server: Server, client: httpx.Client, page: Page) -> None:
    problem = {"title": "Conflict", "status": 409, "detail": "the task is locked by another operator"}

    def refuse(route: Route, request: Request) -> None:
        route.fulfill(
            status=409, headers={"Content-Type": "application/problem+json"}, body=json.dumps(problem)
        )

    page.route(f"**/tasks/{NOOP}/pause", refuse)
    page.goto(server.url)
    task = page.locator(f'#tasks-body tr[data-task="{NOOP}"]')
    expect(task).to_have_attribute("data-paused", "false")
    result = page.locator("#ops-result")
    expect(result).to_be_hidden()
    task.get_by_role("button", name="Pause").click()
    expect(result).to_be_visible()
    expect(result).to_contain_text("refused")
    expect(result).to_contain_text("the task is locked by another operator")
    expect(task).to_have_attribute("data-paused", "false")

    page.unroute(f"**/tasks/{NOOP}/pause")
    task.get_by_role("button", name="Pause").click()  # one that works clears the message
    expect(task).to_have_attribute("data-paused", "true")
    expect(result).to_be_hidden()
    assert {t["name"]: t["paused"] for t in client.get("/tasks").json()["tasks"]}[NOOP] is True


def test_a_bulk_delete_of_the_open_job_leaves_the_pane_saying_so_without_actions(
    server: Server, client: httpx.Client, page: Page
) -> None:
    job = submit(client, FAIL, {})
    assert wait_finished(client, job["id"])["status"] == "failed"
    page.goto(server.url)
    open_job(page, job["id"])
    expect(page.locator("#btn-retry")).to_be_visible()
    expect(page.locator("#btn-delete")).to_be_visible()

    row(page, job["id"]).locator("input.sel").check()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#bulk-delete").click()
    expect(page.locator("#bulk-result")).to_have_text("deleted 1 job")
    expect(row(page, job["id"])).to_have_count(0)

    message = page.locator("#detail-message")
    expect(message).to_be_visible()
    expect(message).to_contain_text("deleted")
    expect(page.locator("#detail")).to_have_attribute("data-gone", "true")
    for button in ("#btn-retry", "#btn-delete", "#btn-cancel"):
        expect(page.locator(button)).to_be_hidden()
    # the polls that follow do not bring the actions back
    for _ in range(2):
        with page.expect_response(lambda resp: "/jobs?" in resp.url and "parent=" not in resp.url):
            pass
    expect(page.locator("#btn-retry")).to_be_hidden()
    expect(page.locator("#btn-delete")).to_be_hidden()
    assert client.get(f"/jobs/{job['id']}").status_code == 404


def test_the_children_tree_of_a_wide_parent_asks_the_server_a_bounded_number_of_times(
    server: Server, client: httpx.Client, page: Page
) -> None:
    children = 60
    parent = submit(client, "tests.e2e_tasks.fan_out", {"path": "", "n": children})
    wait_finished(client, parent["id"])
    asked: list[str] = []
    page.on(
        "request", lambda req: asked.append(req.url) if "/jobs?" in req.url and "parent=" in req.url else None
    )
    page.goto(f"{server.url}/#job={parent['id']}")  # its children fill the list's first page
    expect(page.locator("#detail-id")).to_have_text(parent["id"])
    nodes = page.locator("#detail-children li[data-job-id]")
    expect(nodes).to_have_count(children + 1)  # the tail child too
    expect(page.locator('#detail-children li[data-status="completed"]')).to_have_count(children + 1)

    asked.clear()
    polls = 5
    for _ in range(polls):  # list polls, one every 2 s
        with page.expect_response(lambda resp: "/jobs?" in resp.url and "parent=" not in resp.url):
            pass
    # one parent's children and at most 20 look-ups for grandchildren per tree refresh, at most
    # one refresh per poll; one request per child on every poll would be 61 a poll
    print(f"{len(asked)} GET /jobs?parent= in {polls} polls")
    assert len(asked) <= polls * 21, (len(asked), asked[:5])
    expect(nodes).to_have_count(children + 1)


def test_webhook_deliveries_say_which_event_they_were_for(
    server: Server, client: httpx.Client, page: Page, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.script("/hook", Reply(200), Reply(200))
    resp = client.post(
        "/jobs",
        json={
            "task": "tests.e2e_tasks.approval",
            "args": {"path": str(tmp_path / "a")},
            "webhook_url": receiver.url("/hook"),
        },
    )
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]
    receiver.wait_for(1, "/hook")  # job.waiting
    assert client.post(f"/jobs/{job_id}/signals/approve", json={"ok": True}).status_code in (200, 202)
    wait_finished(client, job_id)
    receiver.wait_for(2, "/hook")  # job.completed

    page.goto(server.url)
    open_job(page, job_id)
    deliveries = page.locator('#detail-webhooks tr[data-attempt="1"]')
    expect(deliveries).to_have_count(2)
    expect(page.locator("table.deliveries thead")).to_contain_text("Type")
    expect(page.locator('#detail-webhooks tr[data-type="job.waiting"]')).to_contain_text("job.waiting")
    expect(page.locator('#detail-webhooks tr[data-type="job.completed"]')).to_contain_text("job.completed")


def test_a_schedules_next_run_is_shown_in_the_schedules_own_zone_and_named(
    server: Server, client: httpx.Client, browser: Browser
) -> None:
    """Beside `0 3 * * * Asia/Kathmandu` the next run reads 03:00 with the zone's name, not the
    browser's 21:15 with no zone (the operator's browser here is in UTC)."""
    made = client.put(
        "/schedules/daily",
        json={"task": ADD, "cron": "0 3 * * *", "timezone": "Asia/Kathmandu", "args": {"a": 1, "b": 1}},
    )
    assert made.status_code in (200, 201), made.text
    context = browser.new_context(viewport={"width": 1440, "height": 900}, timezone_id="UTC")
    try:
        page = context.new_page()
        page.goto(server.url)
        cell = page.locator('#schedules-body tr[data-schedule="daily"] td').nth(3)
        expect(cell).to_contain_text("03:00:00")
        expect(cell).to_contain_text(re.compile(r"GMT\+5:45|\+0545|NPT"))
        expect(cell).to_have_attribute("title", re.compile(r"(09:15:00 PM|21:15:00) your time"))
    finally:
        context.close()


def test_a_restart_that_turns_auth_on_leaves_no_stale_rows_or_error_under_the_banner(
    tmp_path: Path, page: Page
) -> None:
    srv = start_server(tmp_path)
    try:
        job = submit(srv.client(), ADD, {"a": 1, "b": 2})
        page.goto(srv.url)
        expect(row(page, job["id"])).to_be_visible()
        srv.kill()
        expect(page.locator("#list-error")).to_be_visible()  # the server is down: the list says so
        srv.config["auth"] = {"api_keys": ["k1"]}
        write_config(srv.config_path, srv.config)
        srv.restart()
        expect(page.locator("#auth-banner")).to_be_visible()
        expect(page.locator("#jobs-body tr")).to_have_count(0)
        expect(page.locator("#list-error")).to_be_hidden()
        expect(page.locator("#jobs-empty")).to_have_text("Enter the API key to see jobs.")
        enter_api_key(page, "k1")
        expect(row(page, job["id"])).to_be_visible()
    finally:
        srv.stop()


def test_a_job_link_reads_a_finished_job_and_its_deliveries_once(
    server: Server, client: httpx.Client, page: Page
) -> None:
    job = submit(client, ADD, {"a": 1, "b": 2})
    wait_finished(client, job["id"])
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url.split("?")[0]))
    page.goto(f"{server.url}/#job={job['id']}")
    expect(page.locator("#detail")).to_have_attribute("data-job-id", job["id"])
    expect(page.locator("#stream-state")).to_have_attribute("data-stream", "ended")  # after any second read
    path = f"{server.url}/jobs/{job['id']}"
    assert seen.count(path) == 1, seen
    assert seen.count(f"{path}/webhooks") == 1, seen
    assert seen.count(f"{path}/events") == 1, seen
