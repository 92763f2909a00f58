"""The example channel page, built from {% agent_channel %}, in a real Chromium against real daphne.

Needs Debian's chromium (``apt-get install chromium``) and the playwright package; the
test skips with the reason when either is missing. Playwright never downloads a browser.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from urllib.parse import quote

import pytest
from django.conf import settings
from django.test import Client

from agent_channels import publish

from . import procs
from .helpers import create_operator
from .procs import ROOT, CeleryWorker, Daphne, run_python

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CHROMIUM = os.environ.get("AGCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKENS = 200
EXPECTED = "".join(f"tok{i} " for i in range(TOKENS))
ASSISTANT = "agent-channel .agch-message--assistant .agch-bubble"
SCREENSHOT = ROOT / "docs" / "_static" / "example-channel.png"


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


def logged_in_page(browser, server, session_id, **context_options):
    context = browser.new_context(**context_options)
    context.add_cookies([{"name": "sessionid", "value": session_id,
                          "url": f"http://127.0.0.1:{server.port}"}])
    return context.new_page()


def channel_url(server, channel):
    return f"http://127.0.0.1:{server.port}/c/{quote(channel, safe='')}/"


def wait_live(page):
    page.wait_for_selector("agent-channel .agch-connection[data-state=live]", timeout=15_000)


def assistant_text(page):
    return page.locator(ASSISTANT).all_text_contents()


def start_run(page, agent, run_input):
    page.select_option("#agent", agent)
    page.fill("#run-input", run_input)
    page.click("text=Start run")  # a plain form POST; the page comes back with the tag


def test_tokens_stream_live_and_a_reload_mid_stream_resumes_exactly(session_id, server,
                                                                   browser):
    page = logged_in_page(browser, server, session_id)
    page.goto(channel_url(server, "browser:demo/1"))
    start_run(page, "demo", f'{{"tokens": {TOKENS}, "interval_ms": 15}}')
    wait_live(page)
    page.wait_for_function(f"(document.querySelector('{ASSISTANT}') || {{}}).textContent"
                           "?.length > 150", timeout=20_000)
    seen_live = page.locator(ASSISTANT).text_content()
    assert 0 < len(seen_live) < len(EXPECTED), "the first tokens arrive while the run goes on"
    page.reload()  # mid-stream: the server renders what is there, the client continues
    wait_live(page)
    page.evaluate("document.querySelector('agent-channel').controller.reconnect()")  # a drop
    page.wait_for_selector("agent-channel .agch-run-status[data-status=completed]",
                           timeout=30_000)
    page.wait_for_selector("agent-channel .agch-message--assistant:not(.agch-message--streaming)")
    assert assistant_text(page) == [EXPECTED]
    assert page.locator(".agch-message--repaired").count() == 0, \
        "the rendered text plus the streamed deltas must add up without the final event's help"


def test_a_question_is_answered_from_the_page(session_id, server, browser):
    page = logged_in_page(browser, server, session_id)
    page.goto(channel_url(server, "browser:approval"))
    start_run(page, "approval", '{"action": "ship it"}')
    wait_live(page)
    page.click("agent-channel .agch-input-request--pending button:text('yes')", timeout=20_000)
    page.wait_for_selector("agent-channel .agch-run-status[data-status=completed]",
                           timeout=20_000)
    assert assistant_text(page) == ["I am about to ship it.", "Done: ship it."]
    assert page.locator("agent-channel .agch-message--user .agch-bubble").text_content() == "yes"
    assert page.locator("agent-channel .agch-input-request--answered").count() == 1
    assert page.locator("agent-channel [data-agch-action=cancel]").is_disabled()


def test_interrupt_from_the_page_stops_the_run(session_id, server, browser):
    page = logged_in_page(browser, server, session_id)
    page.goto(channel_url(server, "browser:interrupt"))
    start_run(page, "demo", '{"tokens": 2000, "interval_ms": 20}')
    wait_live(page)
    page.wait_for_function(f"(document.querySelector('{ASSISTANT}') || {{}}).textContent"
                           "?.length > 20", timeout=20_000)
    page.click("agent-channel [data-agch-action=interrupt]")
    page.wait_for_selector("agent-channel .agch-run-status[data-status=interrupted]",
                           timeout=20_000)
    assert page.locator("agent-channel .agch-status--client-interrupt").count() == 1
    assert page.locator("agent-channel .agch-message--aborted").count() == 1
    assert len(page.locator(ASSISTANT).text_content()) < len("tok0 ") * 2000


@pytest.fixture
def celery_queue():
    if settings.DB_KIND != "postgres" or settings.LAYER_KIND != "redis":
        pytest.skip("a Celery worker and a second daphne need PostgreSQL and Redis")
    name = f"agch-{uuid.uuid4().hex[:8]}"
    worker = CeleryWorker(name)
    yield name
    worker.stop()


def test_the_page_recovers_when_daphne_restarts_mid_stream(session_id, celery_queue, browser,
                                                          monkeypatch):
    env = {"AGCH_RUN_BACKEND": "celery", "AGCH_CELERY_QUEUE": celery_queue}
    server = Daphne(**env)
    try:
        page = logged_in_page(browser, server, session_id)
        page.goto(channel_url(server, "browser:restart"))
        start_run(page, "demo", '{"tokens": 300, "interval_ms": 20}')
        wait_live(page)
        page.wait_for_function(f"(document.querySelector('{ASSISTANT}') || {{}}).textContent"
                               "?.length > 100", timeout=20_000)
        server.stop()  # the run goes on in the Celery worker
        page.wait_for_selector("agent-channel .agch-connection[data-state=reconnecting]",
                               timeout=10_000)
        monkeypatch.setattr(procs, "free_port", lambda: server.port)
        server = Daphne(**env)  # the same address, a new process
        page.wait_for_selector("agent-channel .agch-run-status[data-status=completed]",
                               timeout=60_000)
        page.wait_for_selector("agent-channel .agch-connection[data-state=live]")
        expected = "".join(f"tok{i} " for i in range(300))
        assert assistant_text(page) == [expected]
        assert page.locator(".agch-message--repaired").count() == 0
    finally:
        server.stop()


@pytest.fixture
def gap_channel():
    publish("browser:gap", "run.queued", {"agent": "demo"})


def test_a_frame_lost_on_the_wire_is_refilled_from_the_events_endpoint(session_id, gap_channel,
                                                                       server, browser):
    page = logged_in_page(browser, server, session_id)
    refills = []
    page.on("request", lambda request: "/events/?since=" in request.url
            and refills.append(request.url))

    def route(ws):
        upstream = ws.connect_to_server()

        def from_server(message):
            frame = json.loads(message)
            if frame.get("type") == "event" and frame["seq"] == 5:  # the second delta
                return  # lost between the server and the page
            ws.send(message)

        upstream.on_message(from_server)
        ws.on_message(upstream.send)

    page.route_web_socket("**/ws/agent-channels/**", route)
    page.goto(channel_url(server, "browser:gap"))
    wait_live(page)
    # The run streams from daphne's in-process worker; its frames pass the route above.
    run = page.evaluate("document.querySelector('agent-channel')"
                        ".startRun('demo', {tokens: 10, interval_ms: 60})")
    assert run["status"] == "queued"
    page.wait_for_selector("agent-channel .agch-run-status[data-status=completed]",
                           timeout=20_000)
    assert assistant_text(page) == ["".join(f"tok{i} " for i in range(10))]
    assert page.locator(".agch-message--repaired").count() == 0, \
        "the deltas must add up, the lost one included, before message.completed"
    assert refills and "since=4" in refills[0], refills


@pytest.fixture
def nojs_channel():
    publish("browser:nojs", "message.delta", {"message_id": "m", "text": "Rendered by Django."})
    publish("browser:nojs", "tool.completed", {"name": "calculator", "call_id": "c",
                                               "arguments": "17*23", "result": 391, "ok": True})


def test_the_page_reads_without_javascript(session_id, nojs_channel, server, browser):
    page = logged_in_page(browser, server, session_id, java_script_enabled=False)
    page.goto(channel_url(server, "browser:nojs"))
    assert assistant_text(page) == ["Rendered by Django."]
    assert page.locator(".agch-tool-result").text_content() == "391"
    assert page.locator(".agch-connection").text_content() == "offline"


HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'


@pytest.fixture
def xss_channel():
    publish("browser:xss", "message.delta", {"message_id": "old", "text": HOSTILE})


def test_hostile_model_output_and_user_input_render_as_text(session_id, xss_channel, server,
                                                            browser):
    page = logged_in_page(browser, server, session_id)
    page.goto(channel_url(server, "browser:xss"))
    wait_live(page)
    # The same text live, rendered by the client this time: from another process...
    published = run_python(
        "import django; django.setup(); from agent_channels import publish; "
        f"publish('browser:xss', 'message.delta', {{'message_id': 'new', 'text': {HOSTILE!r}}})"
    )
    assert published.returncode == 0, published.stderr
    # ...and typed by the user, sent as an input frame and echoed back as client.input.
    page.fill("agent-channel .agch-controls input[name=text]", HOSTILE)
    page.press("agent-channel .agch-controls input[name=text]", "Enter")
    page.wait_for_function("document.querySelectorAll('agent-channel .agch-bubble').length >= 3",
                           timeout=15_000)
    assert page.locator("agent-channel img").count() == 0
    assert page.locator("agent-channel script").count() == 0
    assert page.locator("agent-channel .agch-bubble").all_text_contents() == [HOSTILE] * 3
    assert page.locator("agent-channel .agch-message--user").count() == 1
    assert page.title() != "pwned"


@pytest.fixture
def showcase_channel(django_user_model):
    """A conversation with every kind of item, for the screenshot in docs/templatetags.rst."""
    from agent_channels.channel.log import EventDraft, append

    answer = "17 × 23 = 391. Shall I add it to the invoice?"
    append("showcase", [
        EventDraft("run.queued", {"agent": "chat"}),
        EventDraft("client.input", {"data": {"text": "What is 17 * 23? Use the calculator."}}),
        EventDraft("run.started", {"attempt": 1}),
        EventDraft("tool.started", {"name": "calculator", "call_id": "call_1",
                                    "arguments": '{"expression": "17 * 23"}'}),
        EventDraft("tool.completed", {"name": "calculator", "call_id": "call_1",
                                      "arguments": "", "result": 391, "ok": True}),
        EventDraft("message.delta", {"message_id": "m1", "text": answer[:20]}),
        EventDraft("message.delta", {"message_id": "m1", "text": answer[20:]}),
        EventDraft("message.completed", {"message_id": "m1", "text": answer}),
        EventDraft("input.requested", {"prompt": "Add 391 to invoice #42?",
                                       "choices": ["yes", "no"]}),
        EventDraft("run.waiting", {"prompt": "Add 391 to invoice #42?"}),
    ])


def test_screenshot_of_the_example_channel_page(session_id, showcase_channel, server, browser):
    page = logged_in_page(browser, server, session_id,
                          viewport={"width": 900, "height": 860}, device_scale_factor=1)
    page.goto(channel_url(server, "showcase"))
    wait_live(page)
    assert page.locator("agent-channel .agch-choice").count() == 2
    page.wait_for_selector("agent-channel .agch-presence[data-count='1']")
    assert page.locator("agent-channel .agch-presence").text_content() == "1 watching: browser"
    # The page is checked on every run; the file in docs/ is rewritten only on request
    # (AGCH_SCREENSHOTS=1), so a test run leaves the checkout clean.
    shot = page.screenshot(full_page=True)
    assert len(shot) > 10_000
    if os.environ.get("AGCH_SCREENSHOTS") == "1":
        SCREENSHOT.write_bytes(shot)


@pytest.fixture
def big_channel():
    publish("browser:big", "run.queued", {"agent": "long_answer"})


def test_an_event_too_large_for_the_socket_is_read_over_http(session_id, big_channel, server,
                                                             browser):
    page = logged_in_page(browser, server, session_id)
    fetched = []
    page.on("request", lambda request: "/events/?since=" in request.url
            and fetched.append(request.url))
    page.goto(channel_url(server, "browser:big"))
    wait_live(page)
    size = 1_500_000  # the answer, its message.completed and run.completed are over 512 KiB
    run = page.evaluate("document.querySelector('agent-channel')"
                        f".startRun('long_answer', {{bytes: {size}}})")
    assert run["status"] == "queued"
    page.wait_for_selector("agent-channel .agch-run-status[data-status=completed]",
                           timeout=30_000)
    assert [len(text) for text in assistant_text(page)] == [size]
    assert page.locator(".agch-message--repaired").count() == 0
    assert len(fetched) >= 2, fetched  # message.completed and run.completed came by HTTP
