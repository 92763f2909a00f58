"""The run admin in a real Chromium against real daphne: live runs, cancel, hostile output.

Needs Debian's chromium and the playwright package (the tests skip otherwise; playwright
never downloads a browser). With ``AGCH_SCREENSHOTS=1`` they save the screenshots that
docs/admin.rst shows into docs/_static/; without it nothing in the tree changes.
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import quote

import pytest
from django.test import Client

from agent_channels.channel.log import EventDraft, append
from agent_channels.models import Channel, Run, RunStatus

from .procs import ROOT, Daphne, run_python
from .test_browser import browser  # noqa: F401 - the fixture: Chromium, or a skip

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = os.environ.get("AGCH_SCREENSHOTS") == "1"
STATIC = ROOT / "docs" / "_static"
LIVE = "#agch-run-live agent-channel"
ASSISTANT = f"{LIVE} .agch-message--assistant .agch-bubble"
# Dear, so that the fake model's few tokens cost something to show.
PRICES = {"test-model": [150.0, 600.0]}
HOSTILE = (
    "<img src=x onerror=\"window.pwned=1;document.title='pwned'\">"
    '<script>window.pwned=1;document.title="pwned"</script>'
)


def screenshot(page, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(STATIC / name), full_page=True)
        assert (STATIC / name).stat().st_size > 10_000


@pytest.fixture
def server(llm):
    # After llm: daphne inherits the fake model server's OPENAI_BASE_URL.
    daphne = Daphne(AGCH_MODEL_PRICES=json.dumps(PRICES))
    yield daphne
    daphne.stop()


@pytest.fixture
def session_id(django_user_model):
    # Before the browser: playwright's sync API runs an event loop in this thread, where
    # Django refuses synchronous queries.
    user = django_user_model.objects.create_superuser("ops", email="ops@example.com")
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def open_page(browser, server, session_id, width=1280):  # noqa: F811
    context = browser.new_context(viewport={"width": width, "height": 900}, device_scale_factor=1)
    context.add_cookies(
        [{"name": "sessionid", "value": session_id, "url": f"http://127.0.0.1:{server.port}"}]
    )
    return context.new_page()


def url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def start_demo_run(page, server, channel: str, run_input: str, agent: str = "demo") -> None:
    """Start a run from the example project's page: it runs in daphne's in-process worker."""
    page.goto(url(server, f"/c/{quote(channel, safe='')}/"))
    page.select_option("#agent", agent)
    page.fill("#run-input", run_input)
    page.click("text=Start run")


def open_run_from_the_list(page, server, channel: str) -> None:
    """As an operator would: the run list, searched by channel, then the run's page."""
    page.goto(url(server, f"/admin/agent_channels/run/?q={quote(channel)}"))
    page.click("#result_list tbody tr:first-child th a")
    page.wait_for_selector("#agch-run-actions")


def wait_live(page) -> None:
    page.wait_for_selector(f"{LIVE} .agch-connection[data-state=live]", timeout=15_000)


def text_length(page) -> int:
    return int(
        page.evaluate(f"(document.querySelector('{ASSISTANT}') || {{}}).textContent?.length || 0")
    )


def test_a_run_streams_live_on_its_page_then_shows_its_whole_history(
    session_id, server, browser  # noqa: F811
):
    tokens = 300
    expected = "".join(f"tok{i} " for i in range(tokens))
    page = open_page(browser, server, session_id)
    start_demo_run(page, server, "adm:live", f'{{"tokens": {tokens}, "interval_ms": 25}}')
    open_run_from_the_list(page, server, "adm:live")
    wait_live(page)
    # Marks this document: a reload would lose it. The bubble's text is kept as the run
    # ends, before the page swaps in the history.
    page.evaluate(
        """() => {
        window.sameDocument = true;
        document.addEventListener("agch:run.completed", () => {
          const bubble = document.querySelector("#agch-run-live .agch-message--assistant");
          window.liveText = bubble.querySelector(".agch-bubble").textContent;
          window.liveRepaired = bubble.classList.contains("agch-message--repaired");
        });
      }"""
    )
    page.wait_for_function(f"document.querySelector('{ASSISTANT}')?.textContent.length > 80",
                           timeout=20_000)
    seen = text_length(page)
    assert seen < len(expected), "the first tokens arrive while the run goes on"
    page.wait_for_function(
        f"document.querySelector('{ASSISTANT}')?.textContent.length > {seen + 40}",
        timeout=20_000,
    )
    assert page.locator(f"{LIVE} .agch-run-status").get_attribute("data-status") == "running"
    screenshot(page, "admin-run-live.png")
    # A dropped socket: the state says so, and the client resumes where it was.
    page.evaluate(f"document.querySelector('{LIVE}').reconnect()")
    wait_live(page)
    # The run ends: the same document now shows the finished run's page.
    page.wait_for_selector("#agch-run-history", timeout=30_000)
    assert page.evaluate("window.sameDocument") is True
    assert page.evaluate("window.liveText") == expected
    assert page.evaluate("window.liveRepaired") is False, "the deltas added up live"
    assert page.locator("#agch-run-live").count() == 0
    assert page.locator(".field-status .readonly").text_content().strip() == "Completed"
    history = page.locator("#agch-run-history tr.agch-history-message td div").all_text_contents()
    assert history == [expected]
    assert "Run completed" in page.locator("#agch-run-history").text_content()
    screenshot(page, "admin-run-history.png")


def test_the_cancel_button_stops_a_running_run_within_seconds(
    session_id, server, browser  # noqa: F811
):
    page = open_page(browser, server, session_id)
    start_demo_run(page, server, "adm:cancel", '{"tokens": 3000, "interval_ms": 20}')
    open_run_from_the_list(page, server, "adm:cancel")
    wait_live(page)
    page.wait_for_function(f"document.querySelector('{ASSISTANT}')?.textContent.length > 20",
                           timeout=20_000)
    clicked = time.monotonic()
    page.click("#agch-run-actions button[value=cancel]")  # a POST, back to the same page
    page.wait_for_selector("#agch-run-history", timeout=15_000)
    page.wait_for_function(
        "document.querySelector('.field-status .readonly')?.textContent.trim() === 'Cancelled'",
        timeout=15_000,
    )
    elapsed = time.monotonic() - clicked
    assert elapsed < 10, f"cancelled after {elapsed:.1f} s"
    history = page.locator("#agch-run-history").text_content()
    assert "Cancel requested" in history and "by ops" in history and "Run cancelled" in history
    # The message stopped short of its 3000 tokens, and the run has no controls left.
    [message] = page.locator("#agch-run-history tr.agch-history-message td div").all_text_contents()
    assert len(message) < len("tok0 ") * 3000
    assert page.locator("#agch-run-actions button[value=cancel]").count() == 0


@pytest.fixture
def hostile_runs():
    """A finished run and an active one whose model output, tool data and names are hostile."""
    finished_channel = Channel.objects.create(name="adm:xss/done")
    done = Run.objects.create(
        channel=finished_channel,
        agent=HOSTILE,
        status=RunStatus.FAILED,
        output={"text": HOSTILE},
        error=HOSTILE,
    )
    append(
        finished_channel.name,
        [
            EventDraft("run.started", {"attempt": 1}, done.pk),
            EventDraft("message.delta", {"message_id": "m", "text": HOSTILE}, done.pk),
            EventDraft("tool.started", {"name": HOSTILE, "call_id": "c", "arguments": HOSTILE},
                       done.pk),
            EventDraft("tool.completed", {"name": HOSTILE, "call_id": "c", "arguments": "",
                                          "result": HOSTILE, "ok": True}, done.pk),
            EventDraft("run.failed", {"error": HOSTILE}, done.pk),
        ],
    )
    active_channel = Channel.objects.create(name="adm:xss/live")
    active = Run.objects.create(channel=active_channel, agent="demo", status=RunStatus.RUNNING)
    append(
        active_channel.name,
        [EventDraft("message.delta", {"message_id": "old", "text": HOSTILE}, active.pk)],
    )
    return str(done.pk), str(active.pk)


def assert_inert(page, scope: str) -> None:
    assert page.locator(f"{scope} img").count() == 0
    assert page.evaluate("window.pwned") is None
    assert page.title() != "pwned"


def test_hostile_model_output_is_inert_on_the_run_page_and_the_lists(
    session_id, hostile_runs, server, browser  # noqa: F811
):
    done, active = hostile_runs
    page = open_page(browser, server, session_id)
    page.goto(url(server, f"/admin/agent_channels/run/{done}/change/"))
    history = page.locator("#agch-run-history").inner_text()
    assert history.count(HOSTILE) >= 4  # message, tool name, arguments, result (and more)
    assert HOSTILE in page.locator(".field-error .readonly").inner_text()
    assert_inert(page, "#content")
    # The list: the agent column shows the text as it is.
    page.goto(url(server, "/admin/agent_channels/run/?q=adm:xss"))
    assert HOSTILE in page.locator("#result_list").inner_text()
    assert_inert(page, "#result_list")
    # The event list's data column (JSON, cut short), too.
    page.goto(url(server, "/admin/agent_channels/event/"))
    assert "<img src=x onerror=" in page.locator("#result_list").inner_text()
    assert_inert(page, "#result_list")
    # Live: rendered by the server, then sent over the socket from another process.
    page.goto(url(server, f"/admin/agent_channels/run/{active}/change/"))
    wait_live(page)
    published = run_python(
        "import django; django.setup(); from agent_channels import publish; "
        f"publish('adm:xss/live', 'message.delta', {{'message_id': 'new', 'text': {HOSTILE!r}}},"
        f" run={active!r})"
    )
    assert published.returncode == 0, published.stderr
    # ...and as input through the page's socket, echoed back as client.input by daphne
    # (whose live event also brings the other process's event over the in-memory layer).
    page.evaluate(f"document.querySelector('{LIVE}').send({json.dumps(HOSTILE)})")
    page.wait_for_function(
        f"document.querySelectorAll('{LIVE} .agch-bubble').length >= 3", timeout=15_000
    )
    assert page.locator(f"{LIVE} .agch-bubble").all_text_contents() == [HOSTILE] * 3
    assert_inert(page, "#content")


def test_a_model_run_shows_its_tool_call_usage_and_the_list_totals(
    session_id, server, browser  # noqa: F811
):
    page = open_page(browser, server, session_id, width=1700)
    start_demo_run(page, server, "adm:hello", "Say hello.", agent="chat")
    start_demo_run(page, server, "adm:chat", "calculate 17*23", agent="chat")
    open_run_from_the_list(page, server, "adm:chat")
    page.wait_for_selector("#agch-run-history", timeout=30_000)
    history = page.locator("#agch-run-history").inner_text()
    assert "Tool calculator" in history and "391" in history
    assert "The result is 391." in history
    prompt = int(page.locator(".field-prompt_tokens .readonly").text_content())
    completion = int(page.locator(".field-completion_tokens .readonly").text_content())
    assert prompt > 0 and completion > 0
    cost = (prompt * PRICES["test-model"][0] + completion * PRICES["test-model"][1]) / 1e6
    assert page.locator(".field-estimated_cost .readonly").text_content() == f"{cost:.4f}"
    screenshot(page, "admin-run-tool.png")
    page.goto(url(server, "/admin/agent_channels/run/?q=adm:chat"))
    totals = page.locator("#agch-run-totals").inner_text()
    assert "Totals of the 1 selected run:" in totals
    assert f"{prompt + completion} tokens" in totals and f"{cost:.4f} USD" in totals
    for _ in range(40):  # the other run is over within seconds: until the list says so
        page.goto(url(server, "/admin/agent_channels/run/?status__exact=completed"))
        if page.locator("#result_list tbody tr").count() == 2:
            break
        time.sleep(0.25)
    assert "Totals of the 2 selected runs:" in page.locator("#agch-run-totals").inner_text()
    screenshot(page, "admin-run-list.png")
