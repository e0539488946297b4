"""The dashboard's job detail pane, in headless chromium against the real server: a large value
shown as text past a bound, with the full job JSON built only when it is opened; a children
tree cut at 300 that says so; direction controls in job data shown, not obeyed; an open job
deleted elsewhere; the event log's times dated when they are not today's.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests import test_dashboard as dashboard
from tests.inproc import ServedApp, served_app
from tests.test_dashboard import ADD, FAIL, TIMEOUT_MS, log_entries, open_job, row, submit, wait_finished
from tests.test_dashboard_fixes import list_polls

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

FAN_OUT = "tests.e2e_tasks.fan_out"  # spawns `n` children, gathers them, then spawns one more
ECHO = "tests.e2e_tasks.echo"  # returns its `value`: the same data as args and as result
# the browser, page and HTTP client fixtures of the dashboard tests
browser = dashboard.browser
page = dashboard.page
client = dashboard.client
server = dashboard.server


def test_a_large_value_is_shown_as_text_and_the_full_json_is_built_when_opened(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    """A 2.5 MB result made a node per value, twice (the result and the closed "Full job
    JSON"): seconds to open, and every later click slow."""
    big = submit(client, ECHO, {"value": list(range(6000))})  # past 5,000 values
    small = submit(client, ADD, {"a": 1, "b": 2})
    wait_finished(client, big["id"])
    wait_finished(client, small["id"])
    page.goto(f"{server.url}/#job={big['id']}")
    result = page.locator("#detail-result")
    expect(result.locator(".json-note")).to_contain_text("shown as plain text: the first")
    expect(page.locator("#detail-args .json-note")).to_contain_text("shown as plain text")
    expect(result).to_contain_text("  2000,")
    expect(result).not_to_contain_text("5999")  # its start only
    expect(page.locator("#detail .j-num")).to_have_count(0)  # text, not a node per value
    expect(page.locator("#detail-json")).to_be_empty()  # closed: nothing built

    result.get_by_role("button", name="Show all").click()
    expect(result).to_contain_text("  5999\n]")
    expect(result.locator(".json-note")).to_contain_text("all of it")
    expect(page.locator("#detail .j-num")).to_have_count(0)

    page.locator("#detail-raw summary").click()
    expect(page.locator("#detail-json .json-note")).to_be_visible()
    expect(page.locator("#detail-json")).to_contain_text(big["id"])
    page.locator("#detail-raw summary").click()
    expect(page.locator("#detail-json")).to_be_empty()

    open_job(page, small["id"])  # a small value is still coloured JSON
    expect(result).to_have_text("3")
    expect(result.locator(".j-num")).to_have_count(1)
    expect(page.locator("#detail-args .j-key")).to_have_count(2)


def test_a_children_tree_cut_at_300_says_so_and_links_the_list_of_children(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    small = submit(client, FAN_OUT, {"path": "", "n": 2})
    wide = submit(client, FAN_OUT, {"path": "", "n": 300})  # 301 children with the tail one
    wait_finished(client, small["id"])
    wait_finished(client, wide["id"])
    page.goto(f"{server.url}/#job={small['id']}")
    nodes = page.locator("#detail-children li[data-job-id]")
    expect(nodes).to_have_count(3)
    expect(page.locator("#detail-children-more")).to_be_hidden()

    page.evaluate(f"location.hash = '#job={wide['id']}'")  # past the list's first page
    expect(page.locator("#detail-id")).to_have_text(wide["id"])
    expect(nodes).to_have_count(300)
    more = page.locator("#detail-children-more")
    expect(more).to_have_text("300 shown, more not shown: list the children")
    more.get_by_role("link").click()
    expect(page).to_have_url(re.compile(f"[?&]parent={wide['id']}"))
    expect(page.locator("#jobs-body tr")).to_have_count(50)  # the first page of them, and more to load
    expect(page.locator("#load-more")).to_be_visible()


def test_direction_controls_in_job_data_are_shown_not_obeyed(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    """U+202E (right-to-left override) in an error message, a value, a key, a log line or a
    signal name made "payment to \\u202eevil.com\\u202c" read "payment to moc.live"."""
    rlo, pdf = "\u202e", "\u202c"
    failed = submit(client, FAIL, {"message": f"payment to {rlo}evil.com{pdf} approved"})
    echoed = submit(client, ECHO, {"value": {f"to {rlo}key": f"file {rlo}exe.txt"}})
    waiting = submit(client, "tests.e2e_tasks.logs_then_waits", {"name": f"go{rlo}ahead"})
    wait_finished(client, failed["id"])
    wait_finished(client, echoed["id"])
    shown = "payment to <U+202E>evil.com<U+202C> approved"

    page.goto(f"{server.url}/#job={failed['id']}")
    expect(page.locator("#detail-error-message")).to_have_text(shown)
    expect(page.locator("#detail-traceback")).to_contain_text(shown)
    expect(page.locator("#detail-args")).to_contain_text(f'"message": "{shown}"')
    expect(log_entries(page, "status", "failed")).to_contain_text(shown)
    assert rlo not in page.locator("body").inner_text()

    page.evaluate(f"location.hash = '#job={echoed['id']}'")
    expect(page.locator("#detail-result")).to_contain_text('"to <U+202E>key": "file <U+202E>exe.txt"')
    expect(page.locator("#detail-args")).to_contain_text('"to <U+202E>key": "file <U+202E>exe.txt"')
    assert rlo not in page.locator("body").inner_text()

    expect(row(page, waiting["id"]).locator(".waits")).to_have_text("signal go<U+202E>ahead")
    open_job(page, waiting["id"])
    expect(page.locator("#detail-fields")).to_contain_text("signal go<U+202E>ahead")
    expect(log_entries(page, "log").locator(".m")).to_have_text("waiting for go<U+202E>ahead")
    expect(page.locator("#signal-approve")).to_have_text("Approve (go<U+202E>ahead)")
    assert rlo not in page.locator("body").inner_text()


def test_an_open_job_deleted_elsewhere_and_not_listed_shows_as_deleted(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    """A finished job open beside a list that does not hold it stayed on screen, Delete and
    all, after it was deleted with the CLI; and its (empty) children were read every 4 s."""
    job = submit(client, ADD, {"a": 1, "b": 2})
    wait_finished(client, job["id"])
    trees: list[str] = []
    page.on("request", lambda r: trees.append(r.url) if "/jobs?" in r.url and "parent=" in r.url else None)
    page.goto(f"{server.url}/?status=failed#job={job['id']}")  # the list holds no completed job
    expect(page.locator("#jobs-empty")).to_have_text("No jobs match these filters.")
    expect(page.locator("#detail-status")).to_have_text("completed")
    expect(page.locator("#stream-state")).to_have_attribute("data-stream", "ended")
    expect(page.locator("#btn-delete")).to_be_visible()
    list_polls(page, 3)
    assert len(trees) == 1, trees  # a finished job without children: its children are read once

    assert client.delete(f"/jobs/{job['id']}").status_code == 204
    expect(page.locator("#detail")).to_have_attribute("data-gone", "true")
    expect(page.locator("#detail-message")).to_contain_text("deleted")
    expect(page.locator("#btn-delete")).to_be_hidden()
    expect(page.locator("#btn-retry")).to_be_hidden()


class ShiftedClock:
    """The real clocks, with wall time `shift` seconds away: the jobs made meanwhile are dated then."""

    def __init__(self, shift: float) -> None:
        self.shift = shift

    def now(self) -> float:
        return time.time() + self.shift

    def monotonic(self) -> float:
        return time.monotonic()


def test_event_times_from_another_day_show_their_date_and_todays_the_time_alone(
    tmp_path: Path, browser: Browser
) -> None:
    """A job that sleeps until tomorrow: its event log's times, without a date, were ambiguous."""
    clock = ShiftedClock(-2 * 86400)
    with served_app(tmp_path, clock=clock) as srv:
        client = srv.client()
        old = submit(client, ADD, {"a": 1, "b": 2})
        finished_at = datetime.fromisoformat(wait_finished(client, old["id"])["finished_at"])
        clock.shift = 0
        today = submit(client, ADD, {"a": 2, "b": 2})
        wait_finished(client, today["id"])
        # the page writes dates in its locale and time zone: both are set
        context = dashboard.new_context(
            browser, viewport={"width": 1440, "height": 900}, locale="en-US", timezone_id="UTC"
        )
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{srv.url}/#job={old['id']}")
            same_year = finished_at.year == datetime.now(UTC).year
            day = re.escape(finished_at.strftime("%b %d" if same_year else "%b %d, %Y"))
            times = page.locator("#event-log li .t")
            expect(times).to_have_text([re.compile(rf"^{day} \d{{2}}:\d{{2}}:\d{{2}}$")] * 3)
            done = log_entries(page, "status", "completed").locator(".t")
            expect(done).to_have_attribute("title", re.compile(rf"\b{finished_at.year}\b"))  # the full date
            assert done.evaluate("el => el.scrollWidth <= el.clientWidth")  # within its column

            open_job(page, today["id"])
            expect(log_entries(page, "status", "completed")).to_have_count(1)
            expect(times).to_have_text([re.compile(r"^\d{2}:\d{2}:\d{2}$")] * 3)
            assert errors == [], errors
        finally:
            context.close()
