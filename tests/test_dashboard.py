"""The dashboard at `GET /`, driven by headless chromium against the real server.

Each test serves the real app on 127.0.0.1 on a fresh SQLite file (the `server` fixture below:
tests/inproc.py's `served_app`, uvicorn with the server's own settings on a thread of the test
process), submits jobs over HTTP, and checks what the page shows; a test that kills, restarts or
drains the server starts `python -m jobserver` as a subprocess (tests/e2e.py). Waits are
Playwright expectations with bounded timeouts, never sleeps. The page sets a
Content-Security-Policy without 'unsafe-eval', so the tests read the page
through locators rather than `page.evaluate`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Dialog,
    Locator,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)

from tests.inproc import ServedApp, served_app

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Less CPU for what a headless test never uses: the address bar's prewarmed pop-up pages
    # (they repaint on their own), a spare renderer process kept warm for the next page, and a
    # process per site (every page here is one origin on 127.0.0.1).
    "--disable-features=WebUIOmniboxPopup,WebUIOmniboxAimPopup,SpareRendererForSitePerProcess",
    "--disable-site-isolation-trials",
]
SLEEP = "jobserver.examples.sleep"
ADD = "jobserver.examples.add"
FAIL = "jobserver.examples.fail"
CHATTY = "tests.e2e_tasks.chatty"  # reports progress, then runs until its release file exists
TIMEOUT_MS = 15_000
FINISHED = ("completed", "failed", "cancelled")

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServedApp]:
    """The app served in this process: the browser needs a socket, not a server process."""
    with served_app(tmp_path) as served:
        yield served


@pytest.fixture
def client(server: ServedApp) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def new_context(browser: Browser, **options: Any) -> BrowserContext:
    """A browser context that prefers reduced motion, as an operator may: the page's own
    `prefers-reduced-motion` rule stops the running badge's pulse and the bars' transitions,
    which otherwise repaint it many times a second (over half of chromium's CPU here)."""
    return browser.new_context(**{"reduced_motion": "reduce", **options})


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = new_context(browser, viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


def submit(client: httpx.Client, task: str, args: dict[str, Any], **headers: str) -> dict[str, Any]:
    """POST /jobs and return the accepted job."""
    resp = client.post("/jobs", json={"task": task, "args": args}, headers=headers)
    assert resp.status_code == 202, resp.text
    job: dict[str, Any] = resp.json()
    return job


def wait_finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Hold GET /jobs/{id}?wait until the job is finished."""
    resp = client.get(f"/jobs/{job_id}", params={"wait": 30}, timeout=40)
    assert resp.status_code == 200, resp.text
    job: dict[str, Any] = resp.json()
    assert job["status"] in FINISHED, job
    return job


def read_first_event(client: httpx.Client, job_id: str) -> list[str]:
    """The lines of the first event that carries an id on the job's event stream."""
    block: list[str] = []
    with client.stream("GET", f"/jobs/{job_id}/events") as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line != "":
                block.append(line)
            elif any(part.startswith("id:") for part in block):
                return block
            else:
                block = []
    raise AssertionError("the event stream ended before any event with an id")


def row(page: Page, job_id: str) -> Locator:
    return page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')


def log_entries(page: Page, event: str, status: str | None = None) -> Locator:
    selector = f'#event-log li[data-event="{event}"]'
    if status is not None:
        selector += f'[data-status="{status}"]'
    return page.locator(selector)


def open_job(page: Page, job_id: str) -> None:
    """Click the job's row and wait for its detail pane."""
    row(page, job_id).click()
    expect(page.locator("#detail")).to_have_attribute("data-job-id", job_id)
    expect(page.locator("#detail-id")).to_have_text(job_id)


def enter_api_key(page: Page, key: str) -> None:
    """Type a key into the banner's field and send it, as an operator does."""
    page.locator("#api-key").fill(key)
    page.locator("#api-key").press("Enter")


def test_page_lists_a_job_submitted_over_http(server: ServedApp, client: httpx.Client, page: Page) -> None:
    job = submit(client, ADD, {"a": 2, "b": 3})
    wait_finished(client, job["id"])

    resp = page.goto(server.url)
    assert resp is not None and resp.status == 200
    assert resp.headers["content-type"].startswith("text/html")

    r = row(page, job["id"])
    expect(r).to_have_attribute("data-status", "completed")
    expect(r.locator(".col-task")).to_have_text(ADD)
    expect(r.locator(".badge")).to_have_text("completed")
    expect(r.locator(".col-id code")).to_have_attribute("title", job["id"])
    expect(r.locator(".col-attempts")).to_have_text(f"1/{job['max_attempts']}")


def test_running_job_updates_live_without_reload(
    server: ServedApp, client: httpx.Client, page: Page, tmp_path: Path
) -> None:
    documents: list[str] = []
    page.on("request", lambda req: documents.append(req.url) if req.resource_type == "document" else None)
    page.goto(server.url)
    expect(page.locator("#jobs-empty")).to_have_text("No jobs yet.")

    release = tmp_path / "release"  # the job runs until the test has seen it run
    job = submit(client, CHATTY, {"updates": 3, "logs": 0, "release": str(release)})
    r = row(page, job["id"])
    expect(r).to_have_attribute("data-status", "running")
    expect(r.locator(".badge")).to_have_text("running")
    # progress arrives as "current/total · message" while the job runs
    expect(r.locator(".ptext .nums")).to_contain_text("3/3")
    release.touch()
    expect(r).to_have_attribute("data-status", "completed")
    expect(r.locator(".badge")).to_have_text("completed")
    assert len(documents) == 1, documents


def test_detail_pane_shows_job_and_live_event_log(
    server: ServedApp, client: httpx.Client, page: Page, tmp_path: Path
) -> None:
    page.goto(server.url)
    release = tmp_path / "release"  # still running when the row is clicked, however loaded the machine
    job = submit(client, CHATTY, {"updates": 8, "logs": 0, "release": str(release)})
    expect(row(page, job["id"])).to_have_attribute("data-status", "running")

    open_job(page, job["id"])
    expect(page.locator("#detail-task")).to_have_text(CHATTY)
    expect(page.locator("#detail-args")).to_contain_text('"updates"')
    expect(page.locator("#stream-state")).to_have_attribute("data-stream", "live")
    expect(log_entries(page, "status", "running").first).to_be_visible()
    expect(page.locator("#detail-progress-text")).to_contain_text("8/8")  # progress goes to the bar
    # no event comes while it waits for the release, yet its Duration grows with the list's polls
    duration = page.locator("#detail-fields dt:text-is('Duration') + dd")
    expect(duration).not_to_have_text("")
    expect(duration).not_to_have_text(duration.inner_text())
    release.touch()

    expect(page.locator("#detail-status")).to_have_text("completed")
    expect(log_entries(page, "status", "completed")).to_have_count(1)
    expect(page.locator("#stream-state")).to_have_attribute("data-stream", "ended")
    expect(page.locator("#detail-result-section")).to_be_visible()
    page.locator("#detail-raw summary").click()  # built when opened
    expect(page.locator("#detail-json")).to_contain_text(job["id"])
    expect(page.locator("#btn-cancel")).to_be_hidden()
    expect(page.locator("#btn-retry")).to_be_hidden()


def test_detail_pane_shows_durable_steps(server: ServedApp, client: httpx.Client, page: Page) -> None:
    job = submit(client, "jobserver.examples.analyze_documents", {"documents": ["one fish", "two fish"]})
    wait_finished(client, job["id"])
    page.goto(server.url)
    open_job(page, job["id"])
    expect(page.locator("#detail-status")).to_have_text("completed")
    # the status events carry no steps; the pane keeps the ones GET /jobs/{id} gave
    expect(page.locator("#stream-state")).to_have_attribute("data-stream", "ended")
    expect(page.locator("#detail-steps-section")).to_be_visible()
    expect(page.locator('#detail-steps tr[data-step="doc-1"]')).to_contain_text("completed")
    expect(page.locator("#detail-result")).to_contain_text("top_keywords")


def test_reopened_retried_job_shows_every_run(server: ServedApp, client: httpx.Client, page: Page) -> None:
    job = submit(client, FAIL, {})
    wait_finished(client, job["id"])
    assert client.post(f"/jobs/{job['id']}/retry").status_code == 202
    assert wait_finished(client, job["id"])["status"] == "failed"

    page.goto(server.url)
    open_job(page, job["id"])
    expect(log_entries(page, "status", "failed")).to_have_count(2)
    expect(log_entries(page, "status", "running")).to_have_count(2)
    expect(page.locator("#stream-state")).to_have_attribute("data-stream", "ended")


def test_cancel_button_cancels_a_running_sleep_job(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    job = submit(client, SLEEP, {"seconds": 60})
    page.goto(server.url)
    expect(row(page, job["id"])).to_have_attribute("data-status", "running")
    open_job(page, job["id"])
    expect(page.locator("#btn-retry")).to_be_hidden()

    page.once("dialog", lambda dialog: dialog.accept())  # Cancel asks first
    page.locator("#btn-cancel").click()

    expect(page.locator("#detail-status")).to_have_text("cancelled")
    expect(row(page, job["id"])).to_have_attribute("data-status", "cancelled")
    expect(log_entries(page, "status", "cancelled")).to_have_count(1)
    expect(page.locator("#btn-cancel")).to_be_hidden()
    expect(page.locator("#btn-retry")).to_be_visible()
    assert wait_finished(client, job["id"])["status"] == "cancelled"


def test_retry_button_runs_a_failed_job_again(server: ServedApp, client: httpx.Client, page: Page) -> None:
    job = submit(client, FAIL, {})
    assert wait_finished(client, job["id"])["status"] == "failed"
    page.goto(server.url)
    open_job(page, job["id"])
    expect(page.locator("#detail-status")).to_have_text("failed")
    expect(page.locator("#detail-error-section")).to_be_visible()
    expect(page.locator("#detail-traceback")).to_contain_text("Traceback")
    expect(page.locator("#btn-cancel")).to_be_hidden()
    expect(page.locator("#stream-state")).to_have_attribute("data-stream", "ended")
    runs_before = log_entries(page, "status", "running").count()
    assert runs_before >= 1

    with page.expect_response(lambda resp: resp.url.endswith(f"/jobs/{job['id']}/retry")) as answer:
        page.locator("#btn-retry").click()
    assert answer.value.status == 202
    assert answer.value.json()["status"] in ("pending", "running")

    # the page follows the new run: a fresh running status arrives in the live log
    expect(log_entries(page, "status", "running").nth(runs_before)).to_be_attached()
    expect(page.locator("#detail-status")).to_have_text("failed")
    again = wait_finished(client, job["id"])
    assert again["status"] == "failed"


def test_retry_button_restarts_a_cancelled_sleep_job(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    job = submit(client, SLEEP, {"seconds": 60})
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 202
    assert wait_finished(client, job["id"])["status"] == "cancelled"
    page.goto(server.url)
    open_job(page, job["id"])
    expect(page.locator("#detail-status")).to_have_text("cancelled")

    page.locator("#btn-retry").click()

    expect(row(page, job["id"])).to_have_attribute("data-status", "running")
    expect(page.locator("#detail-status")).to_have_text("running")
    expect(page.locator("#btn-cancel")).to_be_visible()
    assert client.get(f"/jobs/{job['id']}").json()["status"] in ("pending", "running")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#btn-cancel").click()
    expect(row(page, job["id"])).to_have_attribute("data-status", "cancelled")


def test_submit_form_queues_a_job_and_shows_problems(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    page.goto(server.url)
    expect(page.locator(f'#submit-task option[value="{ADD}"]')).to_be_attached()

    page.locator("#submit-task").select_option(ADD)
    page.locator("#submit-args").fill('{"a": 2, "b": 40}')
    page.locator("#submit-btn").click()

    expect(page.locator("#submit-ok")).to_be_visible()
    job_id = page.locator("#submit-ok a").get_attribute("data-job-id")
    assert job_id
    expect(page.locator("#detail-status")).to_have_text("completed")
    expect(page.locator("#detail-result")).to_have_text("42")
    expect(row(page, job_id)).to_have_attribute("data-status", "completed")
    assert wait_finished(client, job_id)["result"] == 42

    page.locator("#submit-args").fill('{"a": "<b id=injected>x</b>", "b": 1}')
    page.locator("#submit-btn").click()
    problem = page.locator("#submit-problem")
    expect(problem).to_be_visible()
    expect(problem).to_contain_text("422")
    expect(problem.locator(".p-errors li").first).to_contain_text("a")
    expect(page.locator("#injected")).to_have_count(0)

    page.locator("#submit-args").fill("{not json")
    page.locator("#submit-btn").click()
    expect(problem).to_contain_text("Invalid args")


def test_job_data_is_rendered_as_text(server: ServedApp, client: httpx.Client, page: Page) -> None:
    hostile = '<img id="injected" src="x">'
    job = submit(client, ADD, {"a": 1, "b": 1}, **{"Idempotency-Key": hostile})
    wait_finished(client, job["id"])
    page.goto(server.url)
    open_job(page, job["id"])
    expect(page.locator("#detail-fields")).to_contain_text(hostile)
    expect(page.locator("#injected")).to_have_count(0)


def test_filters_and_load_more(server: ServedApp, client: httpx.Client, page: Page) -> None:
    added = [submit(client, ADD, {"a": i, "b": 0})["id"] for i in range(4)]
    failed = submit(client, FAIL, {})["id"]
    for job_id in [*added, failed]:
        wait_finished(client, job_id)
    newest_first = [failed, *reversed(added)]

    page.goto(f"{server.url}/?page_size=2")
    rows = page.locator("#jobs-body tr")
    expect(rows).to_have_count(2)
    page.locator("#load-more").click()
    expect(rows).to_have_count(4)
    page.locator("#load-more").click()
    expect(rows).to_have_count(5)
    expect(page.locator("#load-more")).to_be_hidden()
    assert [r.get_attribute("data-job-id") for r in rows.all()] == newest_first

    # two more polls of the first page keep the rows loaded by "load more"
    for _ in range(2):
        with page.expect_response(lambda resp: "/jobs?" in resp.url and "cursor=" not in resp.url):
            pass
    expect(rows).to_have_count(5)

    page.locator("#filter-status").select_option("failed")
    expect(rows).to_have_count(1)
    expect(row(page, failed)).to_be_visible()

    page.locator("#filter-status").select_option("")
    page.locator("#filter-task").select_option(ADD)
    expect(rows).to_have_count(2)
    page.locator("#load-more").click()
    expect(rows).to_have_count(4)
    expect(row(page, failed)).to_have_count(0)


def test_event_stream_resumes_with_last_event_id(
    server: ServedApp, client: httpx.Client, page: Page, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    job = submit(client, CHATTY, {"updates": 2, "logs": 0, "release": str(release)})
    first_event = read_first_event(client, job["id"])
    event_id = next(line.split(":", 1)[1].strip() for line in first_event if line.startswith("id:"))

    resumed: list[str | None] = []

    def drop_after_first_event(route: Route, request: Request) -> None:
        if not resumed and request.headers.get("last-event-id") is None:
            resumed.append(None)
            body = "\n".join(first_event) + "\n\n"
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)
            return
        resumed.append(request.headers.get("last-event-id"))
        route.continue_()

    page.route(f"**/jobs/{job['id']}/events", drop_after_first_event)
    page.goto(server.url)
    open_job(page, job["id"])
    expect(page.locator("#detail-progress-text")).to_contain_text("2/2")
    release.touch()
    expect(log_entries(page, "status", "completed")).to_have_count(1)
    assert resumed[:2] == [None, event_id]
    # the event read before the drop is not replayed a second time
    expect(page.locator(f'#event-log li[data-id="{event_id}"]')).to_have_count(1)


def test_api_key_field_unlocks_the_page(tmp_path: Path, page: Page) -> None:
    with served_app(tmp_path, {"auth": {"api_keys": ["k1"]}}) as srv:
        with srv.client(api_key="k1") as client:
            job = submit(client, SLEEP, {"seconds": 1})
        page.goto(srv.url)
        expect(page.locator("#auth-banner")).to_be_visible()
        expect(page.locator("#jobs-body tr")).to_have_count(0)

        enter_api_key(page, "k1")

        expect(page.locator("#auth-banner")).to_be_hidden()
        expect(row(page, job["id"])).to_be_visible()
        open_job(page, job["id"])
        # the event stream carries the key in its Authorization header too
        expect(log_entries(page, "status", "completed")).to_have_count(1)
        lines = page.locator("#event-log li").count()
        page.evaluate("document.querySelectorAll('#event-log li').forEach((li) => { li.dataset.old = '1'; })")
        page.locator("#api-key").press("Enter")  # saved again with the job open: its log is read anew
        expect(page.locator("#event-log li[data-old]")).to_have_count(0)  # not added to the old lines
        expect(page.locator("#event-log li")).to_have_count(lines)
        expect(log_entries(page, "status", "completed")).to_have_count(1)

        page.reload()
        expect(row(page, job["id"])).to_be_visible()
        expect(page.locator("#auth-banner")).to_be_hidden()


def test_waiting_job_is_listed_and_a_signal_from_the_form_completes_it(
    server: ServedApp, client: httpx.Client, page: Page, tmp_path: Path
) -> None:
    sent = submit(client, "tests.e2e_tasks.approval", {"path": str(tmp_path / "a")})
    approved = submit(client, "tests.e2e_tasks.approval", {"path": str(tmp_path / "b")})
    page.goto(server.url)
    page.locator("#filter-status").select_option("waiting")
    for job in (sent, approved):
        r = row(page, job["id"])
        expect(r).to_have_attribute("data-status", "waiting")
        expect(r.locator(".waits")).to_have_text("signal approve")

    open_job(page, sent["id"])
    expect(page.locator("#detail-fields")).to_contain_text("signal approve")
    expect(page.locator("#detail-signal-section")).to_be_visible()
    expect(page.locator("#signal-name")).to_have_value("approve")
    page.locator("#signal-body").fill('{"by": "browser", "ok": true}')
    page.locator("#signal-send").click()
    expect(page.locator("#signal-ok")).to_contain_text('Signal "approve" sent')
    expect(page.locator("#detail-status")).to_have_text("completed")
    expect(page.locator("#detail-result")).to_contain_text('"browser"')
    expect(page.locator("#detail-signal-section")).to_be_hidden()
    assert wait_finished(client, sent["id"])["result"]["answer"] == {"by": "browser", "ok": True}

    open_job(page, approved["id"])
    page.locator("#signal-approve").click()
    expect(page.locator("#detail-status")).to_have_text("completed")
    assert wait_finished(client, approved["id"])["result"]["answer"] == {"approved": True}


def test_a_bad_signal_body_is_refused_in_the_page(
    server: ServedApp, client: httpx.Client, page: Page, tmp_path: Path
) -> None:
    job = submit(client, "tests.e2e_tasks.approval", {"path": str(tmp_path / "a")})
    page.goto(server.url)
    expect(row(page, job["id"])).to_have_attribute("data-status", "waiting")
    open_job(page, job["id"])
    page.locator("#signal-body").fill("{not json")
    page.locator("#signal-send").click()
    expect(page.locator("#signal-problem")).to_contain_text("not valid JSON")
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "waiting"


def test_children_show_as_a_tree_with_their_statuses(
    server: ServedApp, client: httpx.Client, page: Page, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    parent = submit(client, "tests.e2e_tasks.fan_out", {"path": "", "n": 3, "hold": str(hold)})
    page.goto(server.url)
    expect(row(page, parent["id"])).to_have_attribute("data-status", "waiting")
    open_job(page, parent["id"])
    expect(page.locator("#detail-fields")).to_contain_text("children all")
    nodes = page.locator("#detail-children li[data-job-id]")
    expect(nodes).to_have_count(3)
    expect(page.locator('#detail-children li[data-status="running"]').first).to_be_visible()
    asked: list[str] = []

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss()  # a dismissed confirmation changes nothing

    page.once("dialog", answer)
    page.locator("#btn-cancel").click()
    expect(page.locator("#detail-status")).to_have_text("waiting")
    assert asked == [
        f"Cancel job {parent['id']}? A running job is asked to stop. Its unfinished children are cancelled with it."
    ], asked
    hold.unlink()
    expect(page.locator("#detail-status")).to_have_text("completed")
    expect(nodes).to_have_count(4)  # the tail child spawned after the gather
    expect(page.locator('#detail-children li[data-status="completed"]')).to_have_count(4)
