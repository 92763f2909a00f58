"""The AG-UI endpoint with the in-process runtime; every emitted event is validated
against the ``ag-ui-protocol`` package's models."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from ag_ui.core import Event, EventType
from channels.db import database_sync_to_async
from django.test import AsyncClient
from pydantic import TypeAdapter

from agent_channels.agui.mapping import EventMapper
from agent_channels.models import Run, RunStatus

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("inprocess_runtime")]

EVENT = TypeAdapter(Event)


def run_input(thread: str, run_id: str | None = None, text: str = "hi", **extra: Any) -> dict:
    return {
        "threadId": thread,
        "runId": run_id or str(uuid.uuid4()),
        "messages": [{"id": "m1", "role": "user", "content": text}],
        "tools": [],
        "context": [],
        "state": None,
        "forwardedProps": {},
        **extra,
    }


@pytest.fixture
async def client(django_user_model):
    # An operator, who may start runs on any thread id; plain users have their namespace
    # (test_plain_users_run_agents_on_threads_in_their_namespace).
    from .helpers import create_operator

    user = await database_sync_to_async(create_operator)(django_user_model, "ui")
    client = AsyncClient()
    await client.aforce_login(user)
    return client


async def post(client: AsyncClient, agent: str, body: dict) -> list[Any]:
    """POST and read the whole SSE answer; every event must parse as an AG-UI event."""
    response = await client.post(f"/ag-ui/{agent}/", body, content_type="application/json")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/event-stream"
    text = b"".join([chunk async for chunk in response.streaming_content]).decode()
    events = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            events.append(EVENT.validate_json(block[len("data: ") :]))
    return events


async def runs_on(channel: str) -> int:
    # channels' wrapper closes the thread's connection afterwards (the test DB can be dropped).
    count: int = await database_sync_to_async(Run.objects.filter(channel__name=channel).count)()
    return count


def types(events: list[Any]) -> list[str]:
    return [e.type.value for e in events]


async def test_a_chat_run_streams_tools_and_text_as_ag_ui_events(client, llm):
    events = await post(client, "chat", run_input("agui-chat", text="please calculate 6*7"))
    assert types(events)[:5] == [
        "RUN_STARTED",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "TOOL_CALL_RESULT",
    ]
    assert events[1].tool_call_name == "calculator"
    assert json.loads(events[2].delta) == {"expression": "6*7"}
    assert events[4].content == "42"
    assert types(events)[5] == "TEXT_MESSAGE_START" and types(events)[-2] == "TEXT_MESSAGE_END"
    text = "".join(e.delta for e in events if e.type == EventType.TEXT_MESSAGE_CONTENT)
    assert text == "The result is 42."
    finished = events[-1]
    assert finished.type == EventType.RUN_FINISHED
    assert finished.thread_id == "agui-chat" and finished.run_id == events[0].run_id
    assert finished.result == {"text": "The result is 42."}
    assert finished.outcome.type == "success"


async def test_the_same_run_id_reattaches_without_a_second_model_call(client, llm):
    body = run_input("agui-again", text="please calculate 2+3")
    first = await post(client, "chat", body)
    calls = llm.count
    second = await post(client, "chat", body)
    assert llm.count == calls
    assert [e.model_dump() for e in second] == [e.model_dump() for e in first]
    assert await runs_on("agui-again") == 1


async def test_a_client_that_drops_the_stream_mid_answer_reattaches_to_the_same_answer(client, llm):
    llm.reply_tokens, llm.delay = 40, 0.02  # a slow answer: w0 w1 … w39
    body = run_input("agui-drop", text="say something long")
    response = await client.post("/ag-ui/chat/", body, content_type="application/json")
    stream = response.streaming_content
    seen = ""
    while "TEXT_MESSAGE_CONTENT" not in seen:
        seen += (await asyncio.wait_for(stream.__anext__(), 15)).decode()
    await stream.aclose()  # the client goes away mid-answer; the run goes on

    again = await post(client, "chat", body)
    text = "".join(e.delta for e in again if e.type == EventType.TEXT_MESSAGE_CONTENT)
    assert text.split() == [f"w{i}" for i in range(40)]
    assert again[-1].type == EventType.RUN_FINISHED and again[-1].outcome.type == "success"
    assert llm.count == 1  # the answer came from the log, not from a second model call
    assert await runs_on("agui-drop") == 1


async def test_input_requests_are_interrupts_and_resume_answers_them(client):
    body = run_input("agui-approval", forwardedProps={"input": {"action": "ship it"}})
    first = await post(client, "approval", body)
    finished = first[-1]
    assert finished.type == EventType.RUN_FINISHED and finished.outcome.type == "interrupt"
    interrupt = finished.outcome.interrupts[0]
    assert interrupt.reason == "input_required"
    assert interrupt.message == "May I ship it? (yes/no)"
    # The run releases its worker just after asking (the event comes first).
    for _ in range(500):
        run = await database_sync_to_async(Run.objects.get)(channel__name="agui-approval")
        if run.status != RunStatus.RUNNING:
            break
        await asyncio.sleep(0.01)
    assert run.status == RunStatus.WAITING

    resume = run_input(
        "agui-approval",
        resume=[{"interruptId": interrupt.id, "status": "resolved", "payload": {"text": "yes"}}],
    )
    second = await post(client, "approval", resume)
    assert second[0].run_id == resume["runId"]
    text = "".join(e.delta for e in second if e.type == EventType.TEXT_MESSAGE_CONTENT)
    assert text == "Done: ship it."
    assert second[-1].result["approved"] is True
    # The same resume again reattaches: the answer is not sent twice.
    again = await post(client, "approval", resume)
    assert [e.model_dump() for e in again] == [e.model_dump() for e in second]
    assert await runs_on("agui-approval") == 1


async def test_a_failing_run_ends_with_run_error(client):
    events = await post(client, "fail", run_input("agui-fail"))
    assert types(events) == ["RUN_STARTED", "RUN_ERROR"]
    assert "the agent gave up" in events[-1].message


async def test_bad_requests_are_json_errors(client):
    response = await client.post("/ag-ui/chat/", {"threadId": 1}, content_type="application/json")
    assert response.status_code == 400 and response.json()["code"] == "invalid_input"
    response = await client.post("/ag-ui/nope/", run_input("agui-x"), "application/json")
    assert response.status_code == 404 and response.json()["code"] == "unknown_agent"
    response = await AsyncClient().post("/ag-ui/chat/", run_input("agui-x"), "application/json")
    assert response.status_code == 401
    response = await client.get("/ag-ui/chat/")
    assert response.status_code == 405


def test_events_without_an_ag_ui_equivalent_travel_as_custom_events():
    mapper = EventMapper("t", "r", "our")
    frame = {"seq": 5, "event": "custom.echo", "run": "our", "data": {"x": 1}}
    (custom,) = mapper.map(frame)
    assert custom.type == EventType.CUSTOM and custom.name == "custom.echo"
    assert custom.value == {"x": 1}
    assert mapper.map({**frame, "run": "another"}) == []
    # A message published whole still opens and closes.
    whole = {"seq": 6, "event": "message.completed", "run": "our", "data": {"text": "hey"}}
    assert types(mapper.map(whole)) == [
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
    ]


async def test_plain_users_run_agents_on_threads_in_their_namespace(django_user_model):
    user = await database_sync_to_async(django_user_model.objects.create_user)("plain")
    client = AsyncClient()
    await client.aforce_login(user)
    refused = await client.post("/ag-ui/fail/", run_input("agui-anywhere"), "application/json")
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    events = await post(client, "fail", run_input(f"user:{user.pk}/agui-mine"))
    assert events[-1].type == EventType.RUN_ERROR
    assert await runs_on("agui-anywhere") == 0
    assert await runs_on(f"user:{user.pk}/agui-mine") == 1
