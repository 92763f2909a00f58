"""A channel's log compacted into what a page shows: its current state.

``message.delta`` events fold into messages, ``tool.started``/``tool.completed`` into tool
calls with their results, ``input.requested`` into prompts that are pending until answered,
``run.*`` events into the run status. The template tag renders this state so the page is
complete before any JavaScript runs; the client then continues from :attr:`ChannelState.last_seq`
with the same rules (``agent_channels/static/agent_channels/client.js``).

The admin's run history is the same compaction with ``complete=True``: nothing is left out
(lifecycle events, answers, the agent's own events become status lines with their data),
and control items say which user sent them.

Reading a channel costs two queries whatever its length: the channel row, then the events
streamed in chunks (``.iterator()``), never one query per event.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent_channels.models import Channel, Event

__all__ = [
    "CATEGORIES",
    "ChannelState",
    "InputRequest",
    "Item",
    "Message",
    "StatusLine",
    "ToolCall",
    "as_text",
    "category",
    "compact",
    "load_state",
]

#: The kinds of event a rendered channel may show (the tag's ``events`` option).
CATEGORIES = ("messages", "tools", "input", "status")

RUN_STATUS = {
    "run.queued": "queued",
    "run.started": "running",
    "run.waiting": "waiting",
    "run.completed": "completed",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
    "run.interrupted": "interrupted",
}
ACTIVE_STATUSES = frozenset({"queued", "running", "waiting"})
#: Events after which a run answers no more input requests.
_ENDS_REQUESTS = frozenset({"run.completed", "run.failed", "run.cancelled", "run.interrupted"})

#: Rows fetched per round trip while streaming the log.
CHUNK_SIZE = 2000


def category(name: str) -> str:
    """The :data:`CATEGORIES` entry an event belongs to (``"other"`` for none)."""
    if name.startswith("message."):
        return "messages"
    if name.startswith("tool."):
        return "tools"
    if name in ("input.requested", "input.received", "client.input"):
        return "input"
    if name.startswith("run.") or name in ("client.interrupt", "client.cancel"):
        return "status"
    return "other"


def as_text(value: Any) -> str:
    """What a page shows for a JSON value: strings as they are, ``{"text": s}`` as ``s``,
    anything else as indented JSON (the client's ``asText`` does the same)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return str(value["text"])
    return json.dumps(value, indent=2, ensure_ascii=False)


def _status_line(name: str, data: dict[str, Any]) -> str | None:
    if name == "run.queued":
        return f"Run of {data.get('agent') or 'an agent'} queued"
    if name == "run.failed":
        error = data.get("error")
        return f"Run failed: {error}" if error else "Run failed"
    return {
        "run.completed": "Run completed",
        "run.cancelled": "Run cancelled",
        "run.interrupted": "Run interrupted",
        "client.interrupt": "Interrupt requested",
        "client.cancel": "Cancel requested",
    }.get(name)


#: What ``complete=True`` calls events the page view leaves out (others show their name).
_COMPLETE_TEXT = {
    "run.waiting": "Run waiting for input",
    "input.received": "Input received",
    "control.supersede": "Superseded by a newer run",
}


@dataclass
class Message:
    """A message: the agent's (from deltas) or the user's (from a ``client.input``)."""

    message_id: str
    seq: int
    role: str = "assistant"
    #: ``streaming`` until ``message.completed``/``message.aborted`` arrives.
    status: str = "streaming"
    #: The final text differed from the deltas' sum (the final text is shown).
    repaired: bool = False
    parts: list[str] = field(default_factory=list, repr=False)
    kind: str = "message"
    #: The newest seq folded into this message.
    last_seq: int = 0
    #: Who sent a user message: the ``user`` its ``client.input`` event recorded (an id).
    user: Any = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass
class ToolCall:
    call_id: str
    seq: int
    name: str
    arguments: str
    status: str = "running"  # running | done | failed
    result: str | None = None
    kind: str = "tool"
    last_seq: int = 0


@dataclass
class InputRequest:
    seq: int
    prompt: str
    choices: list[str]
    pending: bool = True
    kind: str = "input"


@dataclass
class StatusLine:
    seq: int
    event: str
    text: str
    kind: str = "status"
    #: The event's data as text (``complete=True`` only).
    detail: str = ""
    #: Who sent a control event: the ``user`` it recorded (an id), if any.
    user: Any = None

    @property
    def css(self) -> str:
        return self.event.replace(".", "-")


Item = Message | ToolCall | InputRequest | StatusLine


@dataclass
class ChannelState:
    """What a channel looks like after its events up to :attr:`last_seq`."""

    name: str
    exists: bool = False
    #: The seq the rendered page holds: the client resumes after it.
    last_seq: int = 0
    pruned_seq: int = 0
    run_status: str = ""
    run_agent: str = ""
    #: Items in seq order, at most the ``limit`` newest.
    items: list[Item] = field(default_factory=list)
    #: Items dropped from the front to respect ``limit``.
    truncated: int = 0

    @property
    def run_active(self) -> bool:
        return self.run_status in ACTIVE_STATUSES

    @property
    def pending_inputs(self) -> list[InputRequest]:
        return [i for i in self.items if isinstance(i, InputRequest) and i.pending]


def compact(
    name: str,
    rows: Iterable[tuple[int, str, Any]],
    *,
    categories: Iterable[str] = CATEGORIES,
    limit: int | None = None,
    complete: bool = False,
) -> ChannelState:
    """Fold ``(seq, event name, data)`` rows, in seq order, into a :class:`ChannelState`.

    ``complete``: an operator's view, every event becomes an item (``categories`` is
    ignored); events the page view leaves out become :class:`StatusLine` items whose
    ``detail`` is their data.
    """
    shown = frozenset((*CATEGORIES, "other") if complete else categories)
    state = ChannelState(name=name)
    items: list[Item] = []
    messages: dict[str, Message] = {}
    tools: dict[str, ToolCall] = {}
    requests: list[InputRequest] = []
    for seq, event, raw in rows:
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        state.last_seq = seq
        status = RUN_STATUS.get(event)
        if status is not None:
            state.run_status = status
            if event == "run.queued":
                state.run_agent = str(data.get("agent") or "")
        if event in _ENDS_REQUESTS or event == "input.received":
            for request in requests:
                if request.seq < seq:
                    request.pending = False
            requests.clear()
        if category(event) not in shown:
            continue
        if event == "message.delta" or event in ("message.completed", "message.aborted"):
            message_id = str(data.get("message_id"))
            message = messages.get(message_id)
            if message is None:
                message = messages[message_id] = Message(message_id, seq)
                items.append(message)
            message.last_seq = seq
            if event == "message.delta":
                message.parts.append(as_text(data.get("text", "")))
            else:
                final = data.get("text")
                if isinstance(final, str) and final != message.text:
                    message.parts = [final]
                    message.repaired = True
                message.status = "completed" if event == "message.completed" else "aborted"
        elif event == "client.input":
            user_message = Message(
                f"input-{seq}", seq, role="user", status="completed", last_seq=seq
            )
            user_message.user = data.get("user")
            user_message.parts.append(as_text(data.get("data")))
            items.append(user_message)
        elif event in ("tool.started", "tool.completed"):
            call_id = str(data["call_id"]) if data.get("call_id") is not None else f"seq-{seq}"
            call = tools.get(call_id)
            if call is None:
                call = tools[call_id] = ToolCall(
                    call_id,
                    seq,
                    as_text(data.get("name", "tool")),
                    as_text(data.get("arguments", "")),
                )
                items.append(call)
            call.last_seq = seq
            if event == "tool.completed":
                call.status = "failed" if data.get("ok") is False else "done"
                call.result = as_text(data.get("result"))
        elif event == "input.requested":
            choices = data.get("choices")
            request = InputRequest(
                seq,
                as_text(data.get("prompt", "Input requested")),
                [as_text(c) for c in choices] if isinstance(choices, list) else [],
            )
            requests.append(request)
            items.append(request)
        else:
            text = _status_line(event, data)
            if complete:
                items.append(_complete_line(seq, event, text, raw, data))
            elif text is not None:
                items.append(StatusLine(seq, event, text))
    if limit is not None and len(items) > limit:
        state.truncated = len(items) - limit
        items = items[-limit:]
    state.items = items
    return state


def _complete_line(
    seq: int, event: str, text: str | None, raw: Any, data: dict[str, Any]
) -> StatusLine:
    """The status line ``complete=True`` makes of any event the other items do not show."""
    if event == "run.started":
        text = f"Run started (attempt {data.get('attempt', 1)})"
    line = StatusLine(seq, event, text or _COMPLETE_TEXT.get(event, event))
    # A control event's payload is what its sender typed; otherwise all of the data.
    if event.startswith("client."):
        line.user = data.get("user")
        shown = data.get("data")
    elif event == "input.received" and "value" in data:
        shown = data["value"]
    else:
        shown = raw
    if shown is not None and shown != {}:
        line.detail = as_text(shown)
    return line


def load_state(
    name: str,
    *,
    categories: Iterable[str] = CATEGORIES,
    limit: int | None = 500,
    since: int = 0,
) -> ChannelState:
    """The current state of channel ``name`` from the database, in two queries.

    ``since``: fold only the events after this seq (a run's page starts at its run).
    """
    row = Channel.objects.filter(name=name).values_list("id", "last_seq", "pruned_seq").first()
    if row is None:
        return ChannelState(name=name)
    channel_id, head, pruned = row
    # Only up to the head read above: the client resumes after it, so an event committed
    # meanwhile comes over the socket instead of being shown twice.
    rows = (
        Event.objects.filter(channel_id=channel_id, seq__gt=max(pruned, since), seq__lte=head)
        .order_by("seq")
        .values_list("seq", "name", "data")
        .iterator(chunk_size=CHUNK_SIZE)
    )
    state = compact(name, rows, categories=categories, limit=limit)
    state.exists = True
    state.pruned_seq = pruned
    # Even when the newest events were filtered out, the page holds everything up to head.
    state.last_seq = head
    return state
