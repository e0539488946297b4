"""The dashboard's job detail pane, in headless chromium against the real server: a large value
shown as text past a bound, with the full job JSON built only when it is opened.
"""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests import test_dashboard as dashboard
from tests.inproc import ServedApp
from tests.test_dashboard import ADD, open_job, submit, wait_finished

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

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
