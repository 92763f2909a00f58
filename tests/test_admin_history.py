"""A run's page shows its history compacted, escaped and paged."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from agent_channels.admin import HISTORY_PAGE_SIZE
from agent_channels.channel.control import send_control
from agent_channels.channel.log import EventDraft, append
from agent_channels.channel.state import Message, StatusLine, ToolCall, compact
from agent_channels.models import Channel, Event, Run, RunStatus
from agent_channels.runtime import start_run

from .helpers import wait_for

XSS = "<script>alert('pwned')</script>"


def _run(channel: str) -> Run:
    row, _ = Channel.objects.get_or_create(name=channel)
    # Finished: an active run's page follows it live instead (tests/test_admin_live.py).
    return Run.objects.create(channel=row, agent="chat", status=RunStatus.COMPLETED)


def _page(client, run: Run, **params: object) -> str:
    response = client.get(reverse("admin:agent_channels_run_change", args=[run.pk]), params)
    assert response.status_code == 200
    return response.content.decode()


def _events(run: Run, drafts: list[tuple[str, dict]]) -> list[Event]:
    return append(run.channel.name, [EventDraft(n, d, run.pk) for n, d in drafts])


@pytest.mark.django_db
def test_deltas_become_one_message_and_tool_calls_one_entry():
    run = _run("hist:compact")
    events = _events(
        run,
        [
            ("run.started", {"attempt": 1}),
            ("message.delta", {"message_id": "m1", "text": "Hel"}),
            ("message.delta", {"message_id": "m1", "text": "lo"}),
            ("tool.started", {"name": "add", "call_id": "c1", "arguments": '{"a": 1}'}),
            ("message.delta", {"message_id": "m2", "text": "half"}),
            (
                "tool.completed",
                {"name": "add", "call_id": "c1", "arguments": "", "result": 2, "ok": True},
            ),
            ("message.completed", {"message_id": "m1", "text": "Hello"}),
            ("message.aborted", {"message_id": "m2", "text": "half", "reason": "interrupted"}),
        ],
    )
    rows = [(e.seq, e.name, e.data) for e in events]
    # The admin's history is the template tag's compaction with nothing left out.
    items = compact(run.channel.name, rows, complete=True).items
    assert [type(i).__name__ for i in items] == ["StatusLine", "Message", "ToolCall", "Message"]
    started, hello, tool, half = items
    assert isinstance(started, StatusLine) and started.text == "Run started (attempt 1)"
    assert isinstance(hello, Message) and isinstance(half, Message)
    assert (hello.text, hello.status, hello.seq, hello.last_seq) == ("Hello", "completed", 2, 7)
    assert isinstance(tool, ToolCall)
    assert (tool.arguments, tool.result, tool.status) == ('{"a": 1}', "2", "done")
    assert (half.text, half.status) == ("half", "aborted")
    # The page view of the same events leaves the lifecycle event out.
    assert len(compact(run.channel.name, rows).items) == 3


@pytest.mark.django_db
def test_the_page_shows_messages_tools_and_who_sent_input_all_escaped(admin_client):
    operator = User.objects.create_user("operator")
    run = _run("hist:page")
    _events(
        run,
        [
            ("run.started", {"attempt": 1}),
            ("message.delta", {"message_id": "m1", "text": "Look: "}),
            ("message.delta", {"message_id": "m1", "text": XSS}),
            ("tool.started", {"name": XSS, "call_id": "c1", "arguments": XSS}),
            (
                "tool.completed",
                {
                    "name": XSS,
                    "call_id": "c1",
                    "arguments": XSS,
                    "result": {"html": XSS},
                    "ok": False,
                },
            ),
            ("input.requested", {"prompt": XSS}),
        ],
    )
    send_control(run.channel.name, "input", {"text": XSS}, user=operator, run=run)
    Run.objects.filter(pk=run.pk).update(agent=XSS)
    content = _page(admin_client, run)
    assert XSS not in content
    assert "Look: &lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in content
    assert "Tool &lt;script&gt;" in content
    assert "Input requested" in content
    assert f"by {operator.username}" in content
    assert "streaming" in content  # the message never completed


@pytest.mark.django_db
def test_run_less_control_frames_between_the_runs_events_are_part_of_its_history(admin_client):
    run = _run("hist:ws")
    _events(run, [("run.started", {"attempt": 1})])
    # A WebSocket client's interrupt names no run.
    send_control(run.channel.name, "interrupt", {"why": "ws"})
    _events(run, [("run.interrupted", {})])
    content = _page(admin_client, run)
    assert "Interrupt" in content and "&quot;why&quot;: &quot;ws&quot;" in content


@pytest.mark.django_db
def test_long_histories_are_paged(admin_client):
    run = _run("hist:long")
    total = HISTORY_PAGE_SIZE * 2 + 10
    _events(run, [("custom.tick", {"n": i}) for i in range(total)])
    first = _page(admin_client, run)
    assert "page 1 of 3" in first
    assert "&quot;n&quot;: 0" in first and f"&quot;n&quot;: {HISTORY_PAGE_SIZE}\n" not in first
    last = _page(admin_client, run, history=3)
    assert f"&quot;n&quot;: {total - 1}" in last and "&quot;n&quot;: 0\n" not in last
    # Nonsense page numbers land on a page, not a 500.
    assert "page 3 of 3" in _page(admin_client, run, history="999")
    assert "page 1 of 3" in _page(admin_client, run, history="x")


@pytest.mark.django_db
def test_the_step_journal_is_listed(admin_client):
    run = _run("hist:steps")
    run.steps.create(index=0, kind="model", name=XSS, status="completed")
    content = _page(admin_client, run)
    assert "Step journal" in content and "&lt;script&gt;" in content and XSS not in content


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("inprocess_runtime")
def test_answering_a_waiting_run_from_the_admin_shows_up_in_its_history(admin_client):
    """End to end: the approval agent waits, the admin sends "yes", the run completes."""
    run = start_run("hist:approve", "approval", {"action": "ship it"})

    def waiting() -> bool:
        run.refresh_from_db()
        return run.status == RunStatus.WAITING

    wait_for(waiting)
    admin_client.post(
        reverse("admin:agent_channels_run_control", args=[run.pk]),
        {"kind": "input", "input": "yes"},
    )

    def done() -> bool:
        run.refresh_from_db()
        return not run.is_active

    wait_for(done)
    assert run.status == RunStatus.COMPLETED and run.output["approved"] is True
    content = _page(admin_client, run)
    assert "I am about to ship it." in content and "Done: ship it." in content
    assert "Input received" in content and "by admin" in content


def test_the_complete_compaction_leaves_nothing_out_and_names_senders():
    rows = [
        (1, "run.queued", {"agent": "chat"}),
        (2, "run.started", {"attempt": 2}),
        (3, "input.requested", {"prompt": "ok?", "choices": ["yes", "no"]}),
        (4, "run.waiting", {"prompt": "ok?"}),
        (5, "client.input", {"data": {"text": "yes"}, "user": 7}),
        (6, "input.received", {"value": "yes"}),
        (7, "client.cancel", {"data": None, "user": 8}),
        (8, "control.supersede", {"by": "r2"}),
        (9, "custom.thing", {"n": 1}),
        (10, "run.cancelled", {}),
    ]
    items = compact("c", rows, complete=True).items
    assert [getattr(i, "event", i.kind) for i in items] == [
        "run.queued",
        "run.started",
        "input",
        "run.waiting",
        "message",
        "input.received",
        "client.cancel",
        "control.supersede",
        "custom.thing",
        "run.cancelled",
    ]
    started, request, answer, received, cancel = items[1], items[2], items[4], items[5], items[6]
    assert started.text == "Run started (attempt 2)" and '"attempt": 2' in started.detail
    assert request.pending is False and request.choices == ["yes", "no"]
    assert (answer.role, answer.text, answer.user) == ("user", "yes", 7)
    assert (received.text, received.detail) == ("Input received", "yes")
    assert (cancel.text, cancel.user, cancel.detail) == ("Cancel requested", 8, "")
    assert items[8].detail == '{\n  "n": 1\n}'
    # The page view of the same rows: no lifecycle noise, no unknown events.
    page = [getattr(i, "event", i.kind) for i in compact("c", rows).items]
    assert page == ["run.queued", "input", "message", "client.cancel", "run.cancelled"]


@pytest.mark.django_db
def test_load_state_and_the_tag_start_after_since():
    from django.template import Context, Template

    append("since:c", [EventDraft("message.delta", {"message_id": "a", "text": "early"})])
    append("since:c", [EventDraft("message.delta", {"message_id": "b", "text": "late"})])
    from agent_channels.channel.state import load_state

    state = load_state("since:c", since=1)
    assert [i.text for i in state.items] == ["late"] and state.last_seq == 2
    user = User.objects.create_superuser("tagger")
    html = Template('{% load agent_channels %}{% agent_channel "since:c" since=1 %}').render(
        Context({"user": user})
    )
    assert "late" in html and "early" not in html and 'since="2"' in html
