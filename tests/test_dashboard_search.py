"""The dashboard in headless chromium against the real server: a short id finds its job
whichever rows the list has loaded (`GET /jobs?id_suffix=`), and the last hour's chart follows
the task filter (`GET /stats?task=`)."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests import test_dashboard as dashboard
from tests.inproc import ServedApp
from tests.test_dashboard import ADD, FAIL, row, submit, wait_finished

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# the browser, page and HTTP client fixtures of the dashboard tests
browser = dashboard.browser
page = dashboard.page
client = dashboard.client
server = dashboard.server

NOOP = "jobserver.examples.noop"


def test_a_short_id_finds_a_job_the_list_has_not_loaded(
    server: ServedApp, client: httpx.Client, page: Page
) -> None:
    assert client.post(f"/tasks/{NOOP}/pause").status_code == 200  # the jobs stay pending
    batch = client.post("/jobs/batch", json={"jobs": [{"task": NOOP} for _ in range(12)]})
    assert batch.status_code == 202, batch.text
    ids = [j["id"] for j in batch.json()["jobs"]]
    oldest = ids[0]

    page.goto(f"{server.url}/?page_size=5")
    rows = page.locator("#jobs-body tr")
    expect(rows).to_have_count(5)
    expect(row(page, ids[-1])).to_be_visible()
    expect(row(page, oldest)).to_have_count(0)  # not among the rows loaded

    page.locator("#search").fill(oldest[-8:])  # the short id a row would show
    page.locator("#search").press("Enter")
    expect(rows).to_have_count(1)
    expect(row(page, oldest)).to_be_visible()
    expect(page.locator("#search")).to_have_value(oldest)  # searched by its whole id
    expect(page.locator("#detail")).to_have_attribute("data-job-id", oldest)
    assert f"q={oldest}" in page.url

    page.locator("#search-clear").click()
    expect(rows).to_have_count(5)
    no_such = next(end for end in ("0123456789ab", "ba9876543210") if not any(i.endswith(end) for i in ids))
    page.locator("#search").fill(no_such)
    page.locator("#search").press("Enter")
    expect(page.locator("#jobs-empty")).to_have_text("No job has that id or idempotency key.")


def test_the_chart_follows_the_task_filter(server: ServedApp, client: httpx.Client, page: Page) -> None:
    for job_id in [submit(client, ADD, {"a": i, "b": 1})["id"] for i in range(3)]:
        wait_finished(client, job_id)
    wait_finished(client, submit(client, FAIL, {})["id"])

    page.goto(server.url)
    legend = page.locator("#chart-legend")
    chart = page.locator("#chart")
    expect(legend).to_contain_text("Last hour: 3 completed, 1 failed, 0 cancelled")
    expect(chart.locator("rect.done")).not_to_have_count(0)
    expect(chart).to_have_accessible_name("Jobs finished per minute, last hour")
    expect(legend.locator(".chart-task")).to_have_count(0)

    page.locator("#filter-task").select_option(FAIL)  # no reload: the chart redraws for the task
    expect(legend.locator(".chart-task")).to_have_text(f"Task {FAIL}")
    expect(legend).to_contain_text("Last hour: 0 completed, 1 failed, 0 cancelled")
    expect(chart).to_have_accessible_name(f"Jobs finished per minute, last hour, task {FAIL}")
    expect(chart.locator("rect.done")).to_have_count(0)
    expect(chart.locator("rect.fail")).not_to_have_count(0)

    page.locator("#filter-task").select_option(ADD)
    expect(legend).to_contain_text("Last hour: 3 completed, 0 failed, 0 cancelled")
    expect(chart.locator("rect.fail")).to_have_count(0)

    page.locator("#filter-task").select_option("")
    expect(legend).to_contain_text("Last hour: 3 completed, 1 failed, 0 cancelled")
    expect(legend.locator(".chart-task")).to_have_count(0)
