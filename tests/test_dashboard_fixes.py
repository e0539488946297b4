"""Defects an operator's session found in the dashboard, in headless chromium against the real
server: a long error message that pushed the pane sideways, the keyboard on a row's checkbox and
on the children tree, a refused Pause that said nothing, a deleted job left open with its
actions, a children tree that asked the server once per child on every poll, webhook deliveries
that did not say which event they were for, a schedule's next run in the browser's zone beside a
cron in another, stale rows under the API-key banner after a restart turned auth on, a
finished job read twice when its link was opened, rows loaded by "load more" past the first 500
that never updated, integers beyond 2**53 shown rounded and submitted changed, ticked rows that
stayed selected after they left the list, a filter for a task not registered here dropped by the
task reload, a schedules table and dates that broke at phone width, a long task name or progress
message that widened the page, a double Ctrl+Enter that submitted twice, a pasted API key no
header could carry that was stored and stuck the page, a signal name carried over from the
job opened before, a Pause button that lost the keyboard focus on each refresh, event times that
went back for a resumed job, an error message with no height limit, a refused key that left the
counts and the open job on screen, and direction controls in a task name that were obeyed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Request, Route, expect

from tests import test_dashboard as dashboard
from tests.e2e import start_server
from tests.helpers import REPO, wait_until, write_config
from tests.inproc import ServedApp, served_app
from tests.receiver import Receiver, Reply
from tests.test_dashboard import ADD, FAIL, enter_api_key, log_entries, open_job, row, submit, wait_finished

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

NOOP = "jobserver.examples.noop"
# the browser, page and HTTP client fixtures of the dashboard tests
browser = dashboard.browser
page = dashboard.page
client = dashboard.client
server = dashboard.server


def test_a_long_unbroken_error_message_wraps_inside_the_error_box(
    server: ServedApp, client: httpx.Client, page: Page
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


def test_space_on_a_rows_checkbox_ticks_it_and_enter_on_the_row_moves_the_keyboard_to_the_pane(
    server: ServedApp, client: httpx.Client, page: Page
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
    expect(r).to_have_accessible_description("Enter opens the job's details.")
    expect(r).not_to_have_attribute("aria-current", "true")
    r.focus()
    page.keyboard.press("Enter")  # the row itself still opens with the keyboard
    expect(page.locator("#detail")).to_have_attribute("data-job-id", job["id"])
    expect(page.locator("#detail-task")).to_be_focused()  # the keyboard is in the pane
    expect(r).to_have_attribute("aria-current", "true")
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    expect(r).to_be_focused()  # and back on the row when it closes
    expect(r).not_to_have_attribute("aria-current", "true")
    pause = page.locator(f'#tasks-body tr[data-task="{ADD}"]').get_by_role("button")
    expect(pause).to_have_accessible_name(f"Pause {ADD}")


def test_children_in_the_tree_open_with_enter_and_space(
    server: ServedApp, client: httpx.Client, page: Page
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


def test_a_refused_pause_says_why_next_to_the_panel(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
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
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    job = submit(client, FAIL, {})
    assert wait_finished(client, job["id"])["status"] == "failed"
    page.goto(server.url)
    open_job(page, job["id"])
    expect(page.locator("#btn-retry")).to_be_visible()
    expect(page.locator("#btn-delete")).to_be_visible()

    row(page, job["id"]).locator("input.sel").check()
    page.once("dialog", lambda dialog: dialog.accept())

    # the list reads that follow the action fail (a flaky network): the action still succeeded
    def list_read(url: str) -> bool:
        return "/jobs?" in url

    page.route(list_read, lambda route: route.abort())
    page.locator("#bulk-delete").click()
    expect(page.locator("#bulk-result")).to_have_text("deleted 1 job")
    page.unroute(list_read)
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
    server: ServedApp, client: httpx.Client, page: Page
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
    server: ServedApp, client: httpx.Client, page: Page, receiver: Receiver, tmp_path: Path
) -> None:
    # job.waiting: refused once, then delivered; job.completed: 410 Gone, given up at once
    receiver.script("/hook", Reply(500), Reply(200), Reply(410))
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
    receiver.wait_for(2, "/hook")  # job.waiting, twice
    assert client.post(f"/jobs/{job_id}/signals/approve", json={"ok": True}).status_code in (200, 202)
    wait_finished(client, job_id)
    receiver.wait_for(3, "/hook")  # job.completed
    wait_until(
        lambda: not client.get(f"/jobs/{job_id}/webhooks").json()["pending"], message="final deliveries"
    )
    waiting, completed = {
        d["type"]: d["id"] for d in client.get(f"/jobs/{job_id}/webhooks").json()["deliveries"]
    }.values()

    page.goto(server.url)
    open_job(page, job_id)
    deliveries = page.locator('#detail-webhooks tr[data-attempt="1"]')
    expect(deliveries).to_have_count(2)
    expect(page.locator("table.deliveries thead")).to_contain_text("Type")
    expect(page.locator('#detail-webhooks tr[data-type="job.waiting"]').first).to_contain_text("job.waiting")
    expect(page.locator('#detail-webhooks tr[data-type="job.completed"]')).to_contain_text("job.completed")
    # each delivery's attempts together, under its webhook-id, and the one given up says so
    for delivery_id, attempts in ((waiting, 2), (completed, 1)):
        rows = page.locator(f'#detail-webhooks tr[data-delivery="{delivery_id}"]')
        expect(rows).to_have_count(attempts)
        name = rows.first.locator(".wh-delivery code")
        expect(name).to_have_text(delivery_id[-8:])
        expect(name).to_have_attribute("title", delivery_id)
    expect(page.locator(f'#detail-webhooks tr[data-delivery="{waiting}"]').nth(1)).to_contain_text("200")
    expect(page.locator(f'#detail-webhooks tr[data-delivery="{waiting}"]').first).to_have_attribute(
        "data-outcome", "delivered"
    )
    given_up = page.locator(f'#detail-webhooks tr[data-delivery="{completed}"]')
    expect(given_up).to_have_attribute("data-outcome", "given-up")
    expect(given_up.locator(".wh-delivery")).to_contain_text("given up")


def test_a_schedules_next_run_is_shown_in_the_schedules_own_zone_and_named(
    server: ServedApp, client: httpx.Client, browser: Browser
) -> None:
    """Beside `0 3 * * * Asia/Kathmandu` the next run reads 03:00 with the zone's name, not the
    browser's 21:15 with no zone (the operator's browser here is in UTC)."""
    made = client.put(
        "/schedules/daily",
        json={"task": ADD, "cron": "0 3 * * *", "timezone": "Asia/Kathmandu", "args": {"a": 1, "b": 1}},
    )
    assert made.status_code in (200, 201), made.text
    context = dashboard.new_context(browser, viewport={"width": 1440, "height": 900}, timezone_id="UTC")
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
    server: ServedApp, client: httpx.Client, page: Page
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


def test_polls_stop_reading_deliveries_that_are_all_made(
    server: ServedApp, client: httpx.Client, page: Page, receiver: Receiver
) -> None:
    resp = client.post(
        "/jobs", json={"task": ADD, "args": {"a": 1, "b": 2}, "webhook_url": receiver.url("/hook")}
    )
    assert resp.status_code == 202, resp.text
    job = resp.json()
    receiver.wait_for(1, "/hook")
    wait_until(lambda: client.get(f"/jobs/{job['id']}/webhooks").json()["deliveries"], 10, message="recorded")
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url.split("?")[0]))
    page.goto(f"{server.url}/#job={job['id']}")
    expect(page.locator('#detail-webhooks tr[data-attempt="1"]')).to_have_count(1)
    list_polls(page, 2)  # each poll would have read the deliveries again
    assert seen.count(f"{server.url}/jobs/{job['id']}/webhooks") == 1, seen


def phone(browser: Browser, width: int = 375, height: int = 812) -> tuple[BrowserContext, Page]:
    """A page at phone width; the caller closes the context."""
    context = dashboard.new_context(browser, viewport={"width": width, "height": height}, is_mobile=True)
    page = context.new_page()
    page.set_default_timeout(dashboard.TIMEOUT_MS)
    return context, page


def no_sideways_scroll(page: Page) -> None:
    """Neither the page nor the layout scrolls sideways."""
    widths = page.evaluate(
        """() => {
            const lay = document.querySelector('main.layout');
            return [document.documentElement.scrollWidth, document.documentElement.clientWidth,
                    lay.scrollWidth, lay.clientWidth];
        }"""
    )
    assert widths[0] <= widths[1] and widths[2] <= widths[3], widths


def inside(inner: Locator, outer: Locator) -> None:
    """`inner` lies within `outer` horizontally."""
    a, b = inner.bounding_box(), outer.bounding_box()
    assert a is not None and b is not None
    assert a["x"] >= b["x"] - 0.5 and a["x"] + a["width"] <= b["x"] + b["width"] + 0.5, (a, b)


def list_polls(page: Page, n: int) -> None:
    """Wait for `n` list polls to be answered."""
    for _ in range(n):
        with page.expect_response(lambda resp: "/jobs?" in resp.url and "parent=" not in resp.url):
            pass


def test_rows_loaded_past_the_first_500_by_load_more_stay_current(tmp_path: Path, page: Page) -> None:
    with served_app(tmp_path) as srv:
        client = srv.client()
        started, release = tmp_path / "started", tmp_path / "release"
        blocker = submit(
            client, "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)}
        )
        wait_until(started.exists, message="the blocker to start")
        assert client.post(f"/tasks/{NOOP}/pause").status_code == 200
        victim = submit(client, NOOP, {})
        batch = client.post("/jobs/batch", json={"jobs": [{"task": NOOP, "args": {}}] * 520})
        assert batch.status_code == 202, batch.text
        page.goto(f"{srv.url}/?page_size=500")
        rows = page.locator("#jobs-body tr")
        expect(rows).to_have_count(500)
        page.locator("#load-more").click()
        expect(rows).to_have_count(522)  # the blocker and the victim are the oldest two, past the first 500
        expect(row(page, blocker["id"])).to_have_attribute("data-status", "running")
        expect(row(page, victim["id"])).to_have_attribute("data-status", "pending")

        asked: list[str] = []
        page.on(
            "request", lambda r: asked.append(r.url) if "/jobs?" in r.url and "parent=" not in r.url else None
        )
        release.touch()
        assert wait_finished(client, blocker["id"])["status"] == "completed"
        assert client.post(f"/jobs/{victim['id']}/cancel").status_code in (200, 202)
        expect(row(page, blocker["id"])).to_have_attribute("data-status", "completed")
        expect(row(page, victim["id"])).to_have_attribute("data-status", "cancelled")
        assert client.delete(f"/jobs/{victim['id']}").status_code in (200, 204)
        expect(row(page, victim["id"])).to_have_count(0)  # a deleted job leaves the list
        expect(rows).to_have_count(521)
        expect(page.locator("#stale-note")).to_be_hidden()  # every row shown is current
        expect(page.locator("#jobs-body tr[data-stale]")).to_have_count(0)
        # a poll reads 500 rows at a time: the first page, then one more for the 22 past it
        # (one more read may belong to a poll whose first page was asked before the listener)
        first = [u for u in asked if "cursor=" not in u]
        more = [u for u in asked if "cursor=" in u]
        assert first and more and len(more) <= len(first) + 1, asked


BIG = 2**60 + 1  # beyond 2**53: a JS number would round it to 1152921504606846976


def test_integers_beyond_2_53_are_shown_and_submitted_exactly(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    job = submit(client, ADD, {"a": BIG, "b": 0})
    assert wait_finished(client, job["id"])["result"] == BIG
    page.goto(f"{server.url}/#job={job['id']}")
    expect(page.locator("#detail-status")).to_have_text("completed")
    expect(page.locator("#detail-result")).to_have_text(str(BIG))
    expect(page.locator("#detail-args")).to_contain_text(f'"a": {BIG}')
    page.locator("#detail-raw summary").click()
    expect(page.locator("#detail-json")).to_contain_text(f'"result": {BIG}')

    page.locator("#submit-task").select_option(ADD)
    typed = f'{{"a": {BIG}, "b": 0}}'
    page.locator("#submit-args").fill(typed)
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/jobs")) as sent:
        page.locator("#submit-btn").click()
    assert typed in (sent.value.post_data or ""), sent.value.post_data  # the args as typed
    expect(page.locator("#submit-ok")).to_be_visible()
    new_id = page.locator("#submit-ok a").get_attribute("data-job-id")
    assert new_id
    assert client.get(f"/jobs/{new_id}").json()["args"] == {"a": BIG, "b": 0}
    assert wait_finished(client, new_id)["result"] == BIG
    expect(page.locator("#detail")).to_have_attribute("data-job-id", new_id)
    expect(page.locator("#detail-result")).to_have_text(str(BIG))


def test_the_selection_holds_only_rows_shown_and_select_all_follows_new_rows(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    assert client.post(f"/tasks/{ADD}/pause").status_code == 200
    jobs = [submit(client, ADD, {"a": i, "b": 1}) for i in range(2)]
    page.goto(f"{server.url}/?status=pending")
    for job in jobs:
        row(page, job["id"]).locator("input.sel").check()
    expect(page.locator("#bulk-count")).to_have_text("2 selected")
    expect(page.locator("#select-all")).to_be_checked()
    assert client.post(f"/tasks/{ADD}/resume").status_code == 200  # they run: no longer pending
    expect(page.locator("#jobs-body tr")).to_have_count(0)
    expect(page.locator("#bulk-count")).not_to_contain_text("selected")
    expect(page.locator("#bulk-cancel")).to_be_disabled()
    expect(page.locator("#select-all")).not_to_be_checked()

    assert client.post(f"/tasks/{ADD}/pause").status_code == 200
    first = submit(client, ADD, {"a": 5, "b": 1})
    expect(row(page, first["id"])).to_be_visible()
    page.locator("#select-all").check()
    expect(page.locator("#bulk-count")).to_have_text("1 selected")
    second = submit(client, ADD, {"a": 6, "b": 1})  # a poll brings an unticked row
    expect(row(page, second["id"])).to_be_visible()
    expect(page.locator("#select-all")).not_to_be_checked()
    expect(row(page, second["id"]).locator("input.sel")).not_to_be_checked()
    expect(page.locator("#bulk-count")).to_have_text("1 selected")


def test_a_filter_for_a_task_this_server_does_not_register_holds_across_task_reloads(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    ghost = "elsewhere.tasks.not_registered_here"
    job = submit(client, ADD, {"a": 1, "b": 2})
    wait_finished(client, job["id"])
    page.goto(f"{server.url}/?task={ghost}")
    expect(page.locator("#filter-task")).to_have_value(ghost)
    expect(page.locator("#jobs-empty")).to_have_text("No jobs match these filters.")
    task = page.locator(f'#tasks-body tr[data-task="{NOOP}"]')
    task.get_by_role("button", name="Pause").click()  # the task list is read again
    expect(task).to_have_attribute("data-paused", "true")
    expect(page.locator("#filter-task")).to_have_value(ghost)
    with page.expect_response(lambda resp: "/jobs?" in resp.url and "parent=" not in resp.url) as polled:
        pass
    assert f"task={ghost}" in polled.value.url, polled.value.url
    expect(row(page, job["id"])).to_have_count(0)
    expect(page.locator("#jobs-empty")).to_have_text("No jobs match these filters.")
    assert f"task={ghost}" in page.url


WORDS_SPLIT = """(el) => {
    // the words of an element's text that the layout broke across two lines, though they fit on one
    const node = el.firstChild;
    const out = [];
    const re = /\\S+/g;
    let m;
    while ((m = re.exec(node.textContent))) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const rects = [...range.getClientRects()];
        const wide = rects.reduce((sum, r) => sum + r.width, 0);
        // a word wider than the element has to break; one that fits on a line must not
        if (new Set(rects.map((r) => Math.round(r.top))).size > 1 && wide <= el.clientWidth) out.push(m[0]);
    }
    return out;
}"""


def test_at_phone_width_the_schedules_fit_their_card_and_dates_wrap_between_words(
    server: ServedApp, client: httpx.Client, browser: Browser
) -> None:
    made = client.put(
        "/schedules/nightly-digest",
        json={"task": NOOP, "cron": "0 3 * * *", "timezone": "Europe/Berlin", "args": {}},
    )
    assert made.status_code in (200, 201), made.text
    # a long idempotency key widens the pane's labels, so the dates beside them must wrap
    job = submit(client, ADD, {"a": 1, "b": 2}, **{"Idempotency-Key": "key-with-a-long-tail-" + "k" * 150})
    wait_finished(client, job["id"])
    context, page = phone(browser)
    try:
        page.goto(server.url)
        schedule = page.locator('#schedules-body tr[data-schedule="nightly-digest"]')
        expect(schedule).to_be_visible()
        card = page.locator("#ops-card")
        button = schedule.get_by_role("button", name="Pause")
        button.scroll_into_view_if_needed()
        inside(button, card)
        inside(schedule, card)
        name = schedule.locator("td").first
        box = name.bounding_box()
        assert box is not None and box["height"] < 30, box  # one line, not a letter per line
        no_sideways_scroll(page)
        button.click()  # reachable, and it works
        expect(schedule).to_have_attribute("data-paused", "true")

        open_job(page, job["id"])
        fields = page.locator("#detail-fields dd")
        expect(fields.first).to_be_visible()
        for i in range(fields.count()):
            assert fields.nth(i).evaluate(WORDS_SPLIT) == [], fields.nth(i).text_content()
        no_sideways_scroll(page)
    finally:
        context.close()


LONG_TASK = "longtasks." + "very_long_task_name_segment_" * 6 + "日本語タスク_émoji🙂"
LONG_MESSAGE = "fetching https://example.com/a/rather/long/path/to/a/document/that/goes/on/and/on.html"


def test_a_long_task_name_and_progress_message_stay_within_their_columns(
    tmp_path: Path, browser: Browser
) -> None:
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "longtasks.py").write_text(
        "from jobserver import JobContext, task\n\n\n"
        f"@task(name={LONG_TASK!r})\n"
        "def longname(ctx: JobContext) -> str:\n"
        f"    ctx.progress(1, 2, {LONG_MESSAGE!r})\n"
        "    return 'ok'\n",
        encoding="utf-8",
    )
    srv = start_server(
        tmp_path,
        {"tasks": {"modules": ["jobserver.examples", "tests.e2e_tasks", "longtasks"]}},
        env={"PYTHONPATH": os.pathsep.join([str(REPO), str(mods)])},
    )
    try:
        client = srv.client()
        plain = submit(client, ADD, {"a": 1, "b": 2})
        long = submit(client, LONG_TASK, {})
        wait_finished(client, plain["id"])
        wait_finished(client, long["id"])
        # a why line and a wait under their badges, as a busy list has them
        resp = client.post("/jobs", json={"task": NOOP, "args": {}, "delay": 3600})
        assert resp.status_code == 202, resp.text
        delayed = resp.json()
        waiting = submit(
            client, "tests.e2e_tasks.approval", {"path": str(tmp_path / "approved"), "timeout": 3600}
        )
        # a laptop's width with the pane open leaves the list its narrowest
        for width, height in ((1280, 800), (375, 812)):
            context = dashboard.new_context(
                browser, viewport={"width": width, "height": height}, is_mobile=width < 600
            )
            try:
                page = context.new_page()
                page.set_default_timeout(dashboard.TIMEOUT_MS)
                page.goto(f"{srv.url}/#job={plain['id']}")
                expect(page.locator("#detail-status")).to_have_text("completed")
                expect(page.locator(f'#filter-task option[value="{LONG_TASK}"]')).to_have_count(1)
                expect(row(page, long["id"]).locator(".ptext")).to_contain_text("fetching")
                expect(row(page, delayed["id"]).locator(".why")).to_contain_text("delayed until")
                expect(row(page, waiting["id"]).locator(".waits")).to_contain_text("signal approve until")
                no_sideways_scroll(page)
                select = page.locator("#filter-task").bounding_box()
                assert select is not None and select["width"] <= 260, select
                submit_select = page.locator("#submit-task").bounding_box()
                assert submit_select is not None and submit_select["x"] + submit_select["width"] <= width, (
                    submit_select
                )
                widths = page.evaluate(
                    """() => {
                        const t = document.querySelector('#jobs-table');
                        const col = document.querySelector('.jobs-col');
                        return [t.scrollWidth, t.parentElement.clientWidth, col.scrollWidth, col.clientWidth];
                    }"""
                )
                assert widths[0] <= widths[1] and widths[2] <= widths[3], (width, widths)
                for r in (plain, long, delayed):
                    duration = row(page, r["id"]).locator(".col-duration")
                    duration.scroll_into_view_if_needed()
                    inside(duration, page.locator(".jobs-col"))
                    expect(duration).to_be_in_viewport()
                # a name cut for room loses its module path first: the function's name stays whole
                fn = row(page, plain["id"]).locator(".task-fn")
                assert fn.evaluate("(el) => el.scrollWidth <= el.clientWidth"), "the function name is cut"
                inside(fn, row(page, plain["id"]).locator(".col-task"))
            finally:
                context.close()
    finally:
        srv.stop()


def test_a_quick_double_ctrl_enter_submits_the_job_once(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    held: list[Route] = []
    page.route(
        "**/jobs",
        lambda route, request: held.append(route) if request.method == "POST" else route.continue_(),
    )
    page.goto(server.url)
    page.locator("#submit-task").select_option(ADD)
    args = page.locator("#submit-args")
    args.fill('{"a": 40, "b": 2}')
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/jobs")):
        args.press("Control+Enter")
    expect(page.locator("#submit-btn")).to_be_disabled()  # the first submit is in flight
    args.press("Control+Enter")
    args.press("Control+Enter")
    # the route handler runs as playwright dispatches events: each call to the page pumps them
    wait_until(lambda: held or page.evaluate("() => false"), timeout=15, message="the first POST to be held")
    held[0].continue_()
    expect(page.locator("#submit-ok")).to_be_visible()
    expect(page.locator("#submit-btn")).to_be_enabled()
    list_polls(page, 2)  # a second POST, had one been sent, would have been routed by now
    for route in held[1:]:
        route.continue_()
    assert len(held) == 1, f"{len(held)} POST /jobs for one job"
    assert len(client.get("/jobs", params={"task": ADD}).json()["jobs"]) == 1


def test_an_api_key_is_trimmed_and_one_no_header_can_carry_is_refused_unsaved(
    tmp_path: Path, page: Page
) -> None:
    with served_app(tmp_path, {"auth": {"api_keys": ["k1"]}}) as srv:
        job = submit(srv.client(), ADD, {"a": 1, "b": 2}, Authorization="Bearer k1")
        page.goto(srv.url)
        expect(page.locator("#auth-banner")).to_be_visible()
        enter_api_key(page, " k1\u200b")  # pasted with a space before and a zero-width space after
        expect(page.locator("#auth-banner")).to_be_hidden()
        expect(row(page, job["id"])).to_be_visible()
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "live")
        assert page.evaluate("() => localStorage.getItem('jobserver.apiKey')") == "k1"

        enter_api_key(page, "k1\u2019")  # a curly quote: no HTTP header can carry it
        problem = page.locator("#api-key-problem")
        expect(problem).to_be_visible()
        expect(problem).to_contain_text("not saved")
        expect(problem).to_contain_text("U+2019")
        assert page.evaluate("() => localStorage.getItem('jobserver.apiKey')") == "k1"
        list_polls(page, 1)  # the page goes on with the key it had
        expect(page.locator("#conn-state")).to_have_attribute("data-state", "live")
        expect(page.locator("#list-error")).to_be_hidden()
        expect(row(page, job["id"])).to_be_visible()

        enter_api_key(page, "k1")
        expect(problem).to_be_hidden()
        page.reload()
        expect(row(page, job["id"])).to_be_visible()


def test_the_signal_name_is_reset_when_another_job_is_opened(
    server: ServedApp, client: httpx.Client, page: Page, tmp_path: Path
) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    waiter = submit(client, "tests.e2e_tasks.wait_named", {"name": "go-ahead"})
    runner = submit(
        client, "tests.e2e_tasks.block_until_file", {"started": str(started), "release": str(release)}
    )
    try:
        wait_until(started.exists, message="the runner to start")
        page.goto(server.url)
        open_job(page, waiter["id"])
        expect(page.locator("#detail-status")).to_have_text("waiting")
        expect(page.locator("#signal-name")).to_have_value("go-ahead")
        open_job(page, runner["id"])
        expect(page.locator("#detail-status")).to_have_text("running")
        expect(page.locator("#detail-signal-section")).to_be_visible()
        expect(page.locator("#signal-name")).to_have_value("approve")  # not the other job's "go-ahead"
        open_job(page, waiter["id"])
        expect(page.locator("#signal-name")).to_have_value("go-ahead")
    finally:
        release.touch()
        client.post(f"/jobs/{waiter['id']}/cancel")


def test_the_keyboard_focus_stays_on_a_pause_button_when_the_panel_is_read_again(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    """The schedules and tasks are read again every 10 s and after each Pause or Resume: the
    focused button stays focused (it was dropped to the page's body each time)."""
    made = client.put("/schedules/nightly", json={"task": ADD, "cron": "0 3 * * *", "args": {"a": 1, "b": 1}})
    assert made.status_code in (200, 201), made.text
    page.goto(server.url)
    for selector in (f'#tasks-body tr[data-task="{NOOP}"]', '#schedules-body tr[data-schedule="nightly"]'):
        line = page.locator(selector)
        button = line.get_by_role("button")
        expect(button).to_have_text("Pause")
        button.focus()
        page.keyboard.press("Enter")
        expect(line).to_have_attribute("data-paused", "true")
        expect(button).to_have_text("Resume")
        expect(button).to_be_focused()
        page.keyboard.press("Enter")  # the same key again, on the same row
        expect(line).to_have_attribute("data-paused", "false")
        expect(button).to_be_focused()


def test_event_log_times_never_go_back_for_a_job_that_slept_and_resumed(
    server: ServedApp, client: httpx.Client, page: Page, tmp_path: Path
) -> None:
    """A status event has no clock: its time comes from the job it carries. A job running again
    after a durable sleep still has its first start as `started_at`, so that line read earlier
    than the wait before it; a line whose time the job does not record now shows none."""
    job = submit(client, "tests.e2e_tasks.nap", {"path": str(tmp_path / "nap"), "seconds": 1.2})
    assert wait_finished(client, job["id"])["status"] == "completed"
    page.goto(server.url)
    open_job(page, job["id"])
    expect(page.locator("#stream-state")).to_have_attribute("data-stream", "ended")
    expect(log_entries(page, "status", "completed")).to_have_count(1)
    lines = [
        (li.get_attribute("data-status"), li.locator(".t").inner_text())
        for li in log_entries(page, "status").all()
    ]
    assert [s for s, _ in lines].count("running") == 2, lines
    shown = [t for _, t in lines if t]
    seconds = [sum(int(part) * 60**i for i, part in enumerate(reversed(t.split(":")))) for t in shown]
    assert seconds == sorted(seconds), lines  # never earlier than a line above it
    resumed = [t for s, t in lines if s == "running"][1]
    assert resumed == "", lines  # the job does not record when it ran again


def test_a_very_long_error_message_scrolls_in_its_own_box(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    job = submit(client, FAIL, {"message": "overflow " * 6_000})  # 54,000 characters
    assert wait_finished(client, job["id"])["status"] == "failed"
    page.goto(server.url)
    open_job(page, job["id"])
    message = page.locator("#detail-error-message")
    expect(message).to_contain_text("overflow overflow")
    sizes = message.evaluate("(el) => [el.clientHeight, el.scrollHeight]")
    assert sizes[0] <= 320 < sizes[1], sizes  # bounded, and the rest is a scroll away
    box = page.locator("#detail-error-section").bounding_box()
    assert box is not None and box["height"] < 700, box  # the result and args below stay near


def test_a_refused_key_clears_the_counts_chart_panel_and_the_open_job_until_no_key_is_needed(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    """A page left at "API key needed" never noticed that the server no longer needed one."""
    job = submit(client, ADD, {"a": 1, "b": 2})
    wait_finished(client, job["id"])
    page.goto(server.url)
    open_job(page, job["id"])
    expect(page.locator("#detail-result")).to_have_text("3")
    expect(page.locator("#counts button")).not_to_have_count(0)
    expect(page.locator("#tasks-body tr")).not_to_have_count(0)
    expect(page.locator("#chart-legend")).to_contain_text("Last hour")

    problem = {"title": "Unauthorized", "status": 401, "detail": "missing or wrong API key"}
    page.route(
        lambda url: "/jobs" in url or "/stats" in url or "/tasks" in url or "/schedules" in url,
        lambda route: route.fulfill(
            status=401, headers={"Content-Type": "application/problem+json"}, body=json.dumps(problem)
        ),
    )
    expect(page.locator("#auth-banner")).to_be_visible()  # the next poll is refused
    expect(page.locator("#jobs-body tr")).to_have_count(0)
    expect(page.locator("#counts button")).to_have_count(0)
    expect(page.locator("#chart rect")).to_have_count(0)
    expect(page.locator("#chart-legend")).to_have_text("")
    expect(page.locator("#tasks-body tr")).to_have_count(0)
    expect(page.locator("#schedules-body tr")).to_have_count(0)
    expect(page.locator("#detail")).to_be_hidden()

    page.unroute_all()  # the server needs no key again (as after a restart without keys)
    expect(page.locator("#auth-banner")).to_be_hidden()  # the page notices by itself
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "live")
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-result")).to_have_text("3")
    expect(page.locator("#counts button")).not_to_have_count(0)
    expect(row(page, job["id"])).to_be_visible()


def test_direction_controls_in_a_task_name_are_shown_not_obeyed(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    """A name holding U+202E (right-to-left override) reads backwards from there on: the row,
    the pane's title and the panel show the control as <U+202E> and the name as spelt."""
    job = submit(client, ADD, {"a": 1, "b": 2})
    wait_finished(client, job["id"])
    name = "qa.\u202eevil\u202c.rtl"

    def renamed(route: Route, request: Request) -> None:
        answer = route.fetch()
        data = answer.json()
        for j in data.get("jobs", [data]):
            j["task"] = name
        route.fulfill(response=answer, body=json.dumps(data))

    page.route(lambda url: "/jobs?" in url or url.endswith(f"/jobs/{job['id']}"), renamed)
    page.goto(server.url)
    cell = row(page, job["id"]).locator(".col-task")
    expect(cell).to_have_text("qa.<U+202E>evil<U+202C>.rtl")
    assert "\u202e" not in cell.inner_text()
    open_job(page, job["id"])
    expect(page.locator("#detail-task")).to_have_text("qa.<U+202E>evil<U+202C>.rtl")
    page.unroute_all(behavior="ignoreErrors")  # a poll in flight is not answered after the test


def test_the_event_log_says_why_a_job_went_back_to_pending_and_what_it_waits_for(
    server: ServedApp, client: httpx.Client, page: Page, tmp_path: Path
) -> None:
    again = submit(
        client, "tests.e2e_tasks.fail_then_succeed", {"path": str(tmp_path / "marks"), "failures": 1}
    )
    assert wait_finished(client, again["id"])["status"] == "completed"
    later = submit(client, "tests.e2e_tasks.retry_later", {"delay": 3600})
    parked = submit(client, "tests.e2e_tasks.approval", {"path": str(tmp_path / "a"), "timeout": 3600})
    page.goto(server.url)
    open_job(page, again["id"])
    expect(log_entries(page, "status", "pending").nth(1)).to_have_text(
        re.compile(r"pending: attempt 1 ended with ValueError: boom 1; it runs again$")
    )
    expect(page.locator("#detail-error-section")).to_be_hidden()  # a completed job keeps no error

    expect(row(page, later["id"]).locator(".why")).to_contain_text("delayed until")
    open_job(page, later["id"])
    expect(page.locator("#detail-error-title")).to_have_text("Error of attempt 1: it runs again")
    expect(log_entries(page, "status", "pending").nth(1)).to_contain_text("pending: attempt 1 ended with")

    open_job(page, parked["id"])
    expect(log_entries(page, "status", "waiting")).to_contain_text("waiting for signal approve until ")
