"""A channel's log compacted into what a page shows: its current state.

``message.delta`` events fold into messages, ``tool.started``/``tool.completed`` into tool
calls with their results, ``input.requested`` into prompts that are pending until answered,
``run.*`` events into the run status. The template tag renders this state so the page is
complete before any JavaScript runs; the client then continues from :attr:`ChannelState.last_seq`
with the same rules (``agent_channels/static/agent_channels/client.js``).

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
) -> ChannelState:
    """Fold ``(seq, event name, data)`` rows, in seq order, into a :class:`ChannelState`."""
    shown = frozenset(categories)
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
            if event == "message.delta":
                message.parts.append(as_text(data.get("text", "")))
            else:
                final = data.get("text")
                if isinstance(final, str) and final != message.text:
                    message.parts = [final]
                    message.repaired = True
                message.status = "completed" if event == "message.completed" else "aborted"
        elif event == "client.input":
            user_message = Message(f"input-{seq}", seq, role="user", status="completed")
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
            if text is not None:
                items.append(StatusLine(seq, event, text))
    if limit is not None and len(items) > limit:
        state.truncated = len(items) - limit
        items = items[-limit:]
    state.items = items
    return state


def load_state(
    name: str, *, categories: Iterable[str] = CATEGORIES, limit: int | None = 500
) -> ChannelState:
    """The current state of channel ``name`` from the database, in two queries."""
    row = Channel.objects.filter(name=name).values_list("id", "last_seq", "pruned_seq").first()
    if row is None:
        return ChannelState(name=name)
    channel_id, head, pruned = row
    # Only up to the head read above: the client resumes after it, so an event committed
    # meanwhile comes over the socket instead of being shown twice.
    rows = (
        Event.objects.filter(channel_id=channel_id, seq__gt=pruned, seq__lte=head)
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
