"""The dashboard as operators use it, in headless chromium against the real server: counts
and the last hour's chart, search by id or idempotency key with the filters in the URL,
bulk actions, why a job is pending (every worker thread busy among the reasons), the chart's
finishes by outcome, webhook deliveries, Delete and a confirmed Cancel, a
refused key told from a missing one, the folded event log, schedules and paused tasks, the
limit keys in use, and a layout that holds from a phone to a wide screen.

Screenshots of the list, a job page, the bulk-action flow and a phone-width view are saved
in SCREENSHOTS (printed by the tests that write them).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from tests import test_dashboard as dashboard
from tests.helpers import has_line, wait_until
from tests.inproc import ServedApp, served_app
from tests.receiver import Receiver, Reply
from tests.test_dashboard import (
    ADD,
    FAIL,
    SLEEP,
    TIMEOUT_MS,
    enter_api_key,
    log_entries,
    open_job,
    row,
    submit,
    wait_finished,
)
from tests.test_dashboard_fixes import list_polls

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

NOOP = "jobserver.examples.noop"
BLOCK = "tests.e2e_tasks.block_until_file"
HELD = "tests.e2e_tasks.held_key"  # holds Concurrency("llm:{model}", 3) until its release file exists
# the browser, page and HTTP client fixtures of the dashboard tests
browser = dashboard.browser
page = dashboard.page
client = dashboard.client
server = dashboard.server
SCREENSHOTS = Path(tempfile.gettempdir()) / "jobserver-dashboard-screenshots"


def shot(page: Page, name: str) -> Path:
    """Save a full-page screenshot under SCREENSHOTS."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def submit_delayed(client: httpx.Client, task: str, **headers: str) -> str:
    resp = client.post("/jobs", json={"task": task, "args": {}, "delay": 3600}, headers=headers)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def test_counts_chart_search_and_filters_in_the_url(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    done = [submit(client, ADD, {"a": i, "b": 1})["id"] for i in range(3)]
    keyed = submit(client, ADD, {"a": 9, "b": 9}, **{"Idempotency-Key": "invoice-42"})["id"]
    failed = submit(client, FAIL, {})["id"]
    for job_id in [*done, keyed, failed]:
        wait_finished(client, job_id)

    page.goto(server.url)
    expect(page.locator('#counts button[data-status="completed"] b')).to_have_text("4")
    expect(page.locator('#counts button[data-status="failed"] b')).to_have_text("1")
    expect(page.locator("#chart rect.done")).not_to_have_count(0)
    expect(page.locator("#chart rect.fail")).to_have_count(1)
    expect(page.locator("#chart-legend")).to_contain_text("4 completed, 1 failed")
    expect(page.locator("#jobs-body tr")).to_have_count(5)
    shot(page, "list.png")

    page.locator("#search").fill("invoice-42")
    page.locator("#search").press("Enter")
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    expect(row(page, keyed)).to_be_visible()
    expect(page.locator("#detail")).to_have_attribute("data-job-id", keyed)
    assert "q=invoice-42" in page.url
    expect(page.locator("#bulk-all")).to_be_disabled()  # "every job matching" would not be the search

    missed: list[str] = []
    page.on("response", lambda resp: missed.append(resp.url) if resp.status == 404 else None)
    page.locator("#search").fill("no-such-key")
    page.locator("#search").press("Enter")
    expect(page.locator("#jobs-empty")).to_have_text("No job has that id or idempotency key.")
    list_polls(page, 2)  # a search that answered 404 is not asked again at each poll
    assert missed == [f"{server.url}/jobs/no-such-key"], missed

    page.locator("#search").fill(failed)  # an id works too
    page.locator("#search").press("Enter")
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    expect(row(page, failed)).to_be_visible()
    page.locator("#search-clear").click()
    expect(page.locator("#jobs-body tr")).to_have_count(5)
    page.locator("#search").fill(done[1][-8:])  # the short id a row shows
    page.locator("#search").press("Enter")
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    expect(row(page, done[1])).to_be_visible()
    expect(page.locator("#search")).to_have_value(done[1])
    assert f"q={done[1]}" in page.url
    page.locator("#search-clear").click()
    expect(page.locator("#jobs-body tr")).to_have_count(5)
    expect(page.locator("#bulk-all")).to_be_enabled()

    page.locator('#counts button[data-status="failed"]').click()  # a count filters the list
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    page.locator("#filter-task").select_option(FAIL)
    expect(page).to_have_url(re.compile(r"status=failed"))
    assert f"task={FAIL}" in page.url
    page.reload()
    expect(page.locator("#filter-status")).to_have_value("failed")
    expect(page.locator("#filter-task")).to_have_value(FAIL)
    expect(page.locator("#jobs-body tr")).to_have_count(1)

    expect(page.locator('#counts button[data-status="completed"] b')).to_have_text("0")  # the task's own
    # the chart follows the task filter: the task's own minutes and totals, named in its legend
    expect(page.locator("#chart-legend .chart-task")).to_have_text(f"Task {FAIL}")
    expect(page.locator("#chart-legend")).to_contain_text("Last hour: 0 completed, 1 failed, 0 cancelled")
    expect(page.locator("#chart")).to_have_accessible_name(
        f"Jobs finished per minute, last hour, task {FAIL}"
    )
    expect(page.locator("#chart rect.done")).to_have_count(0)
    focused = page.locator('#counts button[data-status="failed"]')
    focused.focus()
    wait_finished(client, submit(client, FAIL, {})["id"])
    expect(page.locator('#counts button[data-status="failed"] b')).to_have_text("2")  # a poll came
    expect(focused).to_be_focused()  # and the keyboard's place stayed
    focused.click()  # the filter is failed: the click takes it off
    expect(page.locator("#filter-status")).to_have_value("")


def test_bulk_cancel_on_a_selection_then_delete_by_filter(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    ids = [submit_delayed(client, NOOP) for _ in range(3)]
    page.goto(server.url)
    for job_id in ids:
        expect(row(page, job_id).locator(".why")).to_contain_text("delayed until")
    for job_id in ids[:2]:
        row(page, job_id).locator("input.sel").check()
    expect(page.locator("#bulk-count")).to_have_text("2 selected")
    shot(page, "bulk-1-selected.png")

    asked: list[str] = []

    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.locator("#bulk-cancel").click()
    expect(page.locator("#bulk-result")).to_have_text("cancelled 2 jobs")
    # the server cancels a parent's unfinished children with it: the question says so
    children = "Cancelling a parent job also cancels its unfinished children."
    assert asked == [f"Cancel 2 selected jobs? A running job is asked to stop. {children}"], asked
    for job_id in ids[:2]:
        expect(row(page, job_id)).to_have_attribute("data-status", "cancelled")
    expect(row(page, ids[2])).to_have_attribute("data-status", "pending")
    shot(page, "bulk-2-cancelled.png")

    page.locator("#filter-status").select_option("cancelled")
    page.locator("#bulk-all").check()
    expect(page.locator("#bulk-count")).to_contain_text("every job matching status cancelled")
    page.once("dialog", lambda dialog: dialog.dismiss())  # a dismissed confirmation changes nothing
    page.locator("#bulk-delete").click()
    expect(page.locator("#jobs-body tr")).to_have_count(2)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#bulk-delete").click()
    expect(page.locator("#bulk-result")).to_have_text("deleted 2 jobs")
    expect(page.locator("#jobs-body tr")).to_have_count(0)
    shot(page, "bulk-3-deleted.png")
    assert [client.get(f"/jobs/{i}").status_code for i in ids] == [404, 404, 200]

    page.locator("#bulk-all").check()
    page.locator("#filter-status").select_option("pending")  # other filters: "every job" is unticked
    expect(row(page, ids[2])).to_be_visible()
    expect(page.locator("#bulk-all")).not_to_be_checked()
    expect(page.locator("#bulk-count")).not_to_contain_text("every job matching")
    expect(page.locator("#bulk-cancel")).to_be_disabled()

    # only the actions that act on pending jobs are offered for every pending job
    page.locator("#bulk-all").check()
    expect(page.locator("#bulk-cancel")).to_be_enabled()
    expect(page.locator("#bulk-retry")).to_be_disabled()
    expect(page.locator("#bulk-delete")).to_be_disabled()
    expect(page.locator("#bulk-delete")).to_have_attribute("title", re.compile("not pending ones"))
    errors = [{"loc": ["body", "status"], "msg": "Input should be 'waiting'", "type": "literal_error"}]
    refusal = {"title": "Invalid request", "status": 422, "detail": "invalid body: status", "errors": errors}
    page.route(
        "**/jobs/cancel",
        lambda route: route.fulfill(
            status=422, headers={"Content-Type": "application/problem+json"}, body=json.dumps(refusal)
        ),
    )
    page.once("dialog", accept)
    page.locator("#bulk-cancel").click()  # a refusal says why, field by field
    expect(page.locator("#bulk-result")).to_have_text(
        "cancel refused: invalid body: status; body.status: Input should be 'waiting'"
    )
    assert (
        asked[-1] == f"Cancel every job matching status pending? A running job is asked to stop. {children}"
    )
    page.locator("#filter-status").select_option("")  # and is cleared with the filters
    expect(page.locator("#bulk-result")).to_have_text("")
    assert client.get(f"/jobs/{ids[2]}").json()["status"] == "pending"


def test_job_page_why_pending_webhooks_delete_and_confirmed_cancel(
    server: ServedApp, client: httpx.Client, page: Page, receiver: Receiver
) -> None:
    receiver.script("/hook", Reply(200))
    resp = client.post(
        "/jobs", json={"task": ADD, "args": {"a": 2, "b": 3}, "webhook_url": receiver.url("/hook")}
    )
    hooked = resp.json()["id"]
    wait_finished(client, hooked)
    receiver.wait_for(1, "/hook")
    assert client.post(f"/tasks/{NOOP}/pause").status_code == 200
    held = client.post("/jobs", json={"task": NOOP, "args": {}}).json()["id"]

    page.goto(server.url)
    expect(row(page, held).locator(".why")).to_have_text(f"task {NOOP} is paused")
    open_job(page, held)
    expect(page.locator("#detail-why")).to_have_text(f"Why pending: task {NOOP} is paused")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.locator("#btn-cancel").click()
    expect(page.locator("#detail-status")).to_have_text("pending")
    assert client.get(f"/jobs/{held}").json()["status"] == "pending"
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#btn-cancel").click()
    expect(page.locator("#detail-status")).to_have_text("cancelled")
    expect(page.locator("#detail-why")).to_be_hidden()

    open_job(page, hooked)
    expect(page.locator("#detail-webhooks-section")).to_be_visible()
    expect(page.locator('#detail-webhooks tr[data-attempt="1"]')).to_contain_text("200")
    expect(page.locator("#btn-delete")).to_be_visible()
    shot(page, "job.png")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#btn-delete").click()
    expect(page.locator("#detail")).to_be_hidden()
    expect(row(page, hooked)).to_have_count(0)
    assert client.get(f"/jobs/{hooked}").status_code == 404


def test_why_pending_says_every_thread_is_busy_and_the_chart_keeps_cancelled_apart(
    tmp_path: Path, page: Page
) -> None:
    with served_app(tmp_path, {"workers": {"threads": 1}}) as srv:
        with srv.client() as client:
            release = str(tmp_path / "release")
            holder = submit(client, BLOCK, {"started": str(tmp_path / "holder"), "release": release})["id"]
            wait_until(lambda: has_line(tmp_path / "holder"), message="the only thread to run the holder")
            waiting = submit(client, BLOCK, {"started": str(tmp_path / "waiting"), "release": release})["id"]
            cancelled = submit_delayed(client, NOOP)
            assert client.post(f"/jobs/{cancelled}/cancel").status_code == 202

            page.goto(srv.url)
            why = row(page, waiting).locator(".why")
            busy = "waiting for a free worker thread: the only worker thread is busy"
            expect(why).to_have_text(busy)
            expect(why).to_have_attribute("data-reason", "no_free_worker")
            amber = why.evaluate("el => getComputedStyle(el).color")  # told apart from a plain wait
            assert amber != row(page, holder).locator(".why").evaluate("el => getComputedStyle(el).color")
            open_job(page, waiting)
            expect(page.locator("#detail-why")).to_have_text(f"Why pending: {busy}")
            expect(why).to_have_text(busy)
            shot(page, "why-pending-busy.png")
            # the pane follows the reason while its event stream is open (no event carries it)
            expect(page.locator("#stream-state")).to_have_attribute("data-stream", "live")
            task = page.locator(f'#tasks-body tr[data-task="{BLOCK}"]')
            task.get_by_role("button", name="Pause").click()
            expect(why).to_have_text(f"task {BLOCK} is paused")
            expect(page.locator("#detail-why")).to_have_text(f"Why pending: task {BLOCK} is paused")
            task.get_by_role("button", name="Resume").click()
            expect(page.locator("#detail-why")).to_have_text(f"Why pending: {busy}")

            (tmp_path / "release").touch()
            expect(page.locator("#detail-status")).to_have_text("completed")
            expect(page.locator("#detail-why")).to_be_hidden()
            expect(why).to_have_text("")
            for job_id in (holder, waiting):
                wait_finished(client, job_id)

        legend = page.locator("#chart-legend")
        expect(legend).to_contain_text("2 completed, 0 failed, 1 cancelled")
        expect(page.locator("#chart rect.cancel")).to_have_count(1)
        expect(page.locator("#chart rect.done")).not_to_have_count(0)
        expect(legend.locator(".key.cancel")).to_be_visible()
        # read in one go: the chart is redrawn at every poll, a rect read alone may be gone
        done, cancel, key = page.evaluate(
            """() => {
                const style = (selector) => getComputedStyle(document.querySelector(selector));
                return [style('#chart rect.done').fill, style('#chart rect.cancel').fill,
                        style('#chart-legend .key.cancel').backgroundColor];
            }"""
        )
        assert cancel not in (done, "", "none") and key == cancel, (done, cancel, key)


def test_progress_folds_into_the_bar_and_every_log_line_has_a_time(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    job = submit(client, SLEEP, {"seconds": 1.5, "steps": 30})
    page.goto(server.url)
    open_job(page, job["id"])
    expect(page.locator("#detail-status")).to_have_text("completed")
    expect(page.locator("#detail-progress-text")).to_contain_text("30/30")
    expect(log_entries(page, "progress")).to_have_count(0)
    lines = page.locator("#event-log li")
    expect(lines).to_have_count(3 + 30)  # pending, running, completed and the 30 log lines: no progress lines
    expect(log_entries(page, "log")).to_have_count(30)
    for line in lines.all():
        expect(line.locator(".t")).to_have_text(re.compile(r"\d{1,2}:\d{2}"))


def test_schedules_and_paused_tasks_with_pause_and_resume(tmp_path: Path, page: Page) -> None:
    with served_app(tmp_path) as first:
        client = first.client()
        made = client.put(
            "/schedules/nightly", json={"task": ADD, "cron": "0 3 * * *", "args": {"a": 1, "b": 1}}
        )
        assert made.status_code in (200, 201)
        assert client.post(f"/tasks/{NOOP}/pause").status_code == 200
        submit_delayed(client, "tests.e2e_tasks.echo")
    # the server starts again without that module: the job waits for a task this process does
    # not know (another node's, a deploy's)
    with served_app(tmp_path, {"tasks": {"modules": ["jobserver.examples"]}}) as server:
        client = server.client()
        page.goto(server.url)
        schedule = page.locator('#schedules-body tr[data-schedule="nightly"]')
        expect(schedule).to_have_attribute("data-paused", "false")
        schedule.get_by_role("button", name="Pause").click()
        expect(schedule).to_have_attribute("data-paused", "true")
        assert client.get("/schedules/nightly").json()["paused"] is True

        unknown = page.locator('#tasks-body tr[data-unknown="true"]')
        expect(unknown).to_have_count(1)
        expect(unknown).to_contain_text("tests.e2e_tasks.echo")
        expect(unknown).to_contain_text("1 pending")

        task = page.locator(f'#tasks-body tr[data-task="{NOOP}"]')
        expect(task).to_have_attribute("data-paused", "true")
        task.get_by_role("button", name="Resume").click()
        expect(task).to_have_attribute("data-paused", "false")
        assert client.post(f"/tasks/{NOOP}/pause").status_code == 200  # paused elsewhere: the page follows
        expect(task).to_have_attribute("data-paused", "true", timeout=TIMEOUT_MS)
        assert client.post(f"/tasks/{NOOP}/resume").status_code == 200
        done = submit(client, ADD, {"a": 1, "b": 1})
        page.evaluate(f"location.hash = '#job={done['id']}'")  # a link pasted into the open tab
        expect(page.locator("#detail")).to_have_attribute("data-job-id", done["id"])
        assert {t["name"]: t["paused"] for t in client.get("/tasks").json()["tasks"]}[NOOP] is False


def test_limits_panel_shows_a_key_at_its_limit_with_the_jobs_it_holds_back(
    tmp_path: Path, page: Page
) -> None:
    """`held_key` allows 3 at once per model: of 5 jobs, 3 hold the key and 2 are held back.
    The key comes from the args and holds U+202E: shown as spelt, not obeyed."""
    # no retention pass during the test: an idle concurrency key would leave the list
    with served_app(tmp_path, {"retention": {"interval": "1h"}}) as srv:
        client = srv.client()
        page.goto(srv.url)
        expect(page.locator("#limits-empty")).to_have_text("No limits in use.")
        release = tmp_path / "release"
        args = {
            "path": str(tmp_path / "spans"),
            "model": "gpt\u202eevil",
            "hold_s": 0,
            "release": str(release),
        }
        ids = [submit(client, HELD, args)["id"] for _ in range(5)]

        key = page.locator("#limits-body tr")
        expect(key).to_have_count(1)
        expect(page.locator("#limits-empty")).to_be_hidden()
        expect(key.locator("td").first).to_have_text("llm:gpt<U+202E>evil")
        expect(key.locator(".limit-kind")).to_have_text("concurrency")
        expect(key.locator(".limit-use")).to_have_text("3 / 3 running")
        expect(key.locator(".limit-held")).to_have_text("2 jobs held back")
        expect(key).to_have_attribute("data-full", "true")
        held = page.locator('#jobs-body .why[data-reason="blocked_by_limit"]')
        expect(held).to_have_count(2)
        # the amber of a job held back by a limit in the list
        amber = held.first.evaluate("el => getComputedStyle(el).color")
        assert key.locator(".limit-use").evaluate("el => getComputedStyle(el).color") == amber
        shot(page, "limits.png")

        release.touch()
        for job_id in ids:
            assert wait_finished(client, job_id)["status"] == "completed"
        expect(key.locator(".limit-use")).to_have_text("0 / 3 running")
        expect(key.locator(".limit-held")).to_have_text("none held back")
        expect(key).to_have_attribute("data-full", "false")
        assert key.locator(".limit-use").evaluate("el => getComputedStyle(el).color") != amber


def test_a_refused_key_and_a_missing_key_get_different_messages(tmp_path: Path, page: Page) -> None:
    with served_app(tmp_path, {"auth": {"api_keys": ["k1"]}}) as srv:
        page.goto(srv.url)
        expect(page.locator("#auth-banner")).to_have_attribute("data-reason", "missing")
        expect(page.locator("#auth-missing")).to_be_visible()
        expect(page.locator("#auth-rejected")).to_be_hidden()
        enter_api_key(page, "wrong")
        expect(page.locator("#auth-banner")).to_have_attribute("data-reason", "rejected")
        expect(page.locator("#auth-rejected")).to_be_visible()
        expect(page.locator("#auth-missing")).to_be_hidden()
        enter_api_key(page, "k1")
        expect(page.locator("#auth-banner")).to_be_hidden()


def test_duration_stays_visible_at_1400px_with_the_pane_open_and_a_phone_view_holds(
    server: ServedApp, client: httpx.Client, browser: Browser
) -> None:
    job = submit(client, ADD, {"a": 1, "b": 2})
    wait_finished(client, job["id"])
    for width, height, name in ((1400, 900, "wide-with-pane.png"), (390, 844, "phone.png")):
        context = dashboard.new_context(browser, viewport={"width": width, "height": height})
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server.url)
            open_job(page, job["id"])
            duration = row(page, job["id"]).locator(".col-duration")
            expect(duration).to_be_visible()
            expect(duration).not_to_have_text("")
            box = duration.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (width, box)
            for part in ("#search", "#bulk-retry", "#detail-status"):
                part_box = page.locator(part).bounding_box()
                assert part_box is not None and part_box["x"] + part_box["width"] <= width, (width, part)
            tops = [page.locator(f"#bulk-{kind}").bounding_box() for kind in ("retry", "cancel", "delete")]
            assert len({round(b["y"]) for b in tops if b}) == 1, (width, tops)  # the buttons on one line
            shot(page, name)
        finally:
            context.close()


def test_on_a_phone_opening_a_job_scrolls_to_its_pane(
    server: ServedApp, client: httpx.Client, browser: Browser
) -> None:
    wait_finished(client, submit(client, ADD, {"a": 1, "b": 2})["id"])
    more = client.post("/jobs/batch", json={"jobs": [{"task": NOOP, "args": {}, "delay": 3600}] * 30})
    assert more.status_code == 202  # a list longer than the screen, above the pane
    job = more.json()["jobs"][0]
    context = dashboard.new_context(browser, viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server.url)
        expect(row(page, job["id"])).to_be_visible()
        widths = page.evaluate(
            "() => { const t = document.querySelector('#jobs-body').closest('table');"
            " return [t.scrollWidth, t.parentElement.clientWidth]; }"
        )
        assert widths[0] <= widths[1], widths  # no sideways scroll to reach Duration
        open_job(page, job["id"])
        expect(page.locator("#detail-status")).to_be_in_viewport()
    finally:
        context.close()
