"""The example channel page in a real Chromium against a real daphne.

Needs Debian's chromium (``apt-get install chromium``) and the playwright package; the
test skips with the reason when either is missing. Playwright never downloads a browser.
"""

from __future__ import annotations

import os
import shutil
from urllib.parse import quote

import pytest
from django.test import Client

from agent_channels import publish

from .helpers import create_operator
from .procs import Daphne

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("AGCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKENS = 200
EXPECTED = "".join(f"tok{i} " for i in range(TOKENS))


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def server():
    daphne = Daphne()
    yield daphne
    daphne.stop()


@pytest.fixture
def session_id(django_user_model):
    # Database work happens before the browser starts: playwright's sync API runs an event
    # loop in this thread, where Django refuses synchronous queries.
    user = create_operator(django_user_model, "browser")
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def logged_in_page(browser, server, session_id):
    context = browser.new_context()
    context.add_cookies([{"name": "sessionid", "value": session_id,
                          "url": f"http://127.0.0.1:{server.port}"}])
    return context.new_page()


def open_channel(page, server, channel):
    page.goto(f"http://127.0.0.1:{server.port}/c/{quote(channel, safe='')}/")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('live')",
                           timeout=15_000)


def test_a_run_streams_into_the_page_and_survives_a_dropped_connection(session_id, server,
                                                                      browser):
    page = logged_in_page(browser, server, session_id)
    open_channel(page, server, "browser:demo/1")
    page.evaluate(
        "(tokens) => document.querySelector('[data-start]').dataset.start ="
        " JSON.stringify({agent: 'demo', input: {tokens, interval_ms: 15}})",
        TOKENS,
    )
    page.click("text=Start demo run")
    page.wait_for_function("(document.querySelector('.msg') || {textContent: ''})"
                           ".textContent.length > 200", timeout=20_000)
    page.click("#drop")  # mid-stream: the page must resume from its last seq
    page.wait_for_selector("text=run.completed", timeout=30_000)
    message = page.locator(".msg")
    assert message.count() == 1
    assert message.text_content() == EXPECTED
    assert "repaired" not in (message.get_attribute("class") or ""), \
        "the streamed deltas must add up to the final text without the completed event's help"
    seqs = [int(line.split()[0][1:]) for line in page.locator(".event").all_text_contents()]
    assert seqs == sorted(set(seqs)), "event lines must be in seq order, each once"


HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><b>bold</b>'


@pytest.fixture
def hostile_channel():
    publish("browser:xss", "custom.output", {"html": HOSTILE})
    publish("browser:xss", "message.delta", {"message_id": "m", "text": HOSTILE})


def test_model_output_is_shown_as_text_never_as_markup(session_id, hostile_channel, server,
                                                      browser):
    hostile = HOSTILE
    page = logged_in_page(browser, server, session_id)
    open_channel(page, server, "browser:xss")
    page.wait_for_selector(".msg", timeout=10_000)
    assert page.locator("#log img").count() == 0 and page.locator("#log b").count() == 0
    assert page.locator(".msg").text_content() == hostile
    assert page.title() != "pwned"
