"""``POST <agent>/``: AG-UI's RunAgentInput in, the AG-UI event stream (SSE) out.

threadId is the channel, runId names the run: the first request with a runId starts
one of our runs (durable, resumable, in the admin); the same request again reattaches
to that run and replays it from its start, with no second model call. A request whose
``resume`` answers an interrupt sends the answer to the waiting run as input and streams
the rest of it under the new runId.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ag_ui.core import RunAgentInput, RunStartedEvent
from ag_ui.encoder import EventEncoder
from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from pydantic import ValidationError

from agent_channels.access import get_access_policy
from agent_channels.agui.mapping import EventMapper, parse_interrupt_id
from agent_channels.channel.control import send_control
from agent_channels.channel.log import read
from agent_channels.channel.names import InvalidChannelName, event_group, validate_name
from agent_channels.channel.wire import register_server_loop
from agent_channels.conf import get_config
from agent_channels.durable_streams.live import Waiter
from agent_channels.durable_streams.views import csrf_refusal
from agent_channels.models import Channel, Event, Run
from agent_channels.runtime.api import start_run
from agent_channels.runtime.errors import (
    AgentForbidden,
    QuotaExceeded,
    RunConflict,
    RunError,
    RunForbidden,
    UnknownAgent,
)
from agent_channels.views.http import error
from agent_channels.views.throttle import throttle

__all__ = ["run_agent"]

#: Seconds between SSE comments on an idle stream, so proxies keep it open.
KEEPALIVE_SECONDS = 15.0


class Refused(Exception):
    def __init__(self, response: JsonResponse) -> None:
        self.response = response


@dataclass
class Plan:
    """Which of our runs an AG-UI request follows, and from which seq."""

    channel_id: int
    run_id: str
    after: int


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(str(getattr(part, "text", "") or "") for part in content)
    return "" if content is None else str(content)


def agent_input(run_input: RunAgentInput) -> dict[str, Any]:
    """What the agent function receives: the conversation, plus ``forwardedProps.input``.

    ``prompt`` is the newest user message, which the example agents read; ``agui`` records
    the AG-UI ids so a repeated request finds this run again.
    """
    messages = [
        {"role": str(getattr(m, "role", "")), "content": _text(getattr(m, "content", None))}
        for m in run_input.messages
    ]
    prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    props = run_input.forwarded_props
    extra = props.get("input") if isinstance(props, dict) else None
    data: dict[str, Any] = {**(extra if isinstance(extra, dict) else {})}
    data.setdefault("prompt", prompt)
    data["messages"] = messages
    if run_input.state is not None:
        data["state"] = run_input.state
    data["agui"] = {"thread_id": run_input.thread_id, "run_id": run_input.run_id}
    return data


def _check_send(user: Any, channel: str) -> None:
    policy = get_access_policy()
    if policy.can_send(user, channel):
        return
    if not Channel.objects.filter(name=channel).exists() and policy.can_create(user, channel):
        return
    if not getattr(user, "is_authenticated", False):
        raise Refused(error(401, "unauthenticated", "Log in to run agents on this thread."))
    raise Refused(error(403, "forbidden", "You may not run agents on this thread."))


def _agent_forbidden(agent: str) -> JsonResponse:
    return error(403, "agent_forbidden", f"You may not run the agent {agent!r} here.")


def _queued_seq(run: Run) -> int:
    seq = (
        Event.objects.filter(run=run, name="run.queued")
        .order_by("seq")
        .values_list("seq", flat=True)
        .first()
    )
    return int(seq or 1)


def plan(user: Any, agent: str, channel: str, run_input: RunAgentInput) -> Plan:
    """Start, find or resume our run for this request (sync: it queries the database)."""
    _check_send(user, channel)
    run_id = run_input.run_id
    existing = Run.objects.filter(channel__name=channel, input__agui__run_id=run_id).first()
    if existing is not None:
        return Plan(existing.channel_id, str(existing.pk), _queued_seq(existing) - 1)
    if run_input.resume:
        return _resume(user, channel, run_input)
    if not user.pk and not get_access_policy().can_run(user, channel, agent):
        # start_run asks can_run for the users it is given; anonymous ones are asked here.
        raise Refused(_agent_forbidden(agent))
    try:
        run = start_run(channel, agent, agent_input(run_input), user=user if user.pk else None)
    except UnknownAgent as exc:
        raise Refused(error(404, "unknown_agent", str(exc))) from None
    except AgentForbidden:
        raise Refused(_agent_forbidden(agent)) from None
    except RunForbidden:
        raise Refused(error(403, "forbidden", "You may not run agents on this thread.")) from None
    except QuotaExceeded as exc:
        raise Refused(error(429, exc.code, str(exc))) from None
    except RunConflict as exc:
        raise Refused(error(409, "run_active", str(exc), run=str(exc.active_run_id))) from None
    except RunError as exc:
        raise Refused(error(400, "invalid_run", str(exc))) from None
    return Plan(run.channel_id, str(run.pk), _queued_seq(run) - 1)


def _resume(user: Any, channel: str, run_input: RunAgentInput) -> Plan:
    assert run_input.resume
    entry = run_input.resume[0]
    parsed = parse_interrupt_id(entry.interrupt_id)
    run = None
    if parsed is not None:
        run = Run.objects.filter(channel__name=channel, pk__in=_uuid_or_none(parsed[0])).first()
    if run is None:
        raise Refused(error(404, "unknown_interrupt", "No such interrupt on this thread."))
    frame_id = f"agui:{run_input.run_id}"
    sent = (
        Event.objects.filter(channel_id=run.channel_id, name__startswith="client.")
        .filter(data__id=frame_id)
        .values_list("seq", flat=True)
        .first()
    )
    if sent is None:  # not a repeat of this request: answer the interrupt now
        kind = "input" if entry.status == "resolved" else "cancel"
        sent = send_control(
            channel, kind, entry.payload, frame_id=frame_id, user=getattr(user, "pk", None), run=run
        )
    return Plan(run.channel_id, str(run.pk), int(sent))


def _uuid_or_none(value: str) -> list[str]:
    try:
        return [str(uuid.UUID(value))]
    except ValueError:
        return []


async def _stream(run_input: RunAgentInput, channel: str, found: Plan) -> AsyncIterator[str]:
    encoder = EventEncoder()
    mapper = EventMapper(run_input.thread_id, run_input.run_id, found.run_id)
    batch = get_config()["REPLAY_BATCH_SIZE"]
    # Join before the first read: whatever commits after it arrives as a wake-up.
    async with Waiter([event_group(channel)]) as waiter:
        yield encoder.encode(
            RunStartedEvent(thread_id=run_input.thread_id, run_id=run_input.run_id)
        )
        after = found.after
        while True:
            events = await database_sync_to_async(read)(found.channel_id, after, None, batch)
            for event in events:
                after = event.seq
                for mapped in mapper.map(event.to_frame()):
                    yield encoder.encode(mapped)
                if mapper.done:
                    return
            if events:
                continue
            if not await waiter.next(KEEPALIVE_SECONDS):
                # Quiet: keep proxies from closing the stream (the log is reread anyway).
                yield ": keep-alive\n\n"


@csrf_exempt
async def run_agent(request: HttpRequest, agent: str) -> HttpResponseBase:
    """Run ``agent`` for an AG-UI client; see docs/agui.rst."""
    register_server_loop(asyncio.get_running_loop())
    if request.method != "POST":
        refusal = error(405, "method_not_allowed", "POST a RunAgentInput.")
        refusal["Allow"] = "POST"
        return refusal
    user = await request.auser()
    refused = csrf_refusal(request, user) or await database_sync_to_async(throttle)(request, "runs")
    if refused is not None:
        return refused
    limit = get_config()["AGUI_MAX_INPUT_BYTES"]
    body = request.read(limit + 1)
    if len(body) > limit:
        return error(413, "too_large", f"The body may be at most {limit} bytes.")
    try:
        run_input = RunAgentInput.model_validate_json(body)
    except ValidationError as exc:
        details = json.loads(exc.json(include_url=False, include_input=False))
        return error(400, "invalid_input", "The body is not a RunAgentInput.", details=details)
    try:
        channel = validate_name(run_input.thread_id)
    except InvalidChannelName as exc:
        return error(400, "invalid_thread", str(exc))
    try:
        found = await database_sync_to_async(plan)(user, agent, channel, run_input)
    except Refused as refusal:
        return refusal.response
    response = StreamingHttpResponse(
        _stream(run_input, channel, found), content_type=EventEncoder().get_content_type()
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
