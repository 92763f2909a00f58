"""Server-Sent Events: ``GET <channel>/events/`` with ``Accept: text/event-stream``.

Each event goes out as ``id: <seq>``, ``event: <name>``, ``data: <the event frame as JSON>``,
exactly the frame the WebSocket sends. ``Last-Event-ID`` (sent by a reconnecting
EventSource) or ``?since=`` says where to start, with the WebSocket's rules.

The log is the source: the stream reads it in batches of ``REPLAY_BATCH_SIZE`` and is woken
by the channel's Channels group when something new is published (frames the layer carries
are sent as they are when they follow on). Because the layer may drop messages, it also asks
the log once ``HEAD_CHECK_MS`` after the last wake-up, and again at every keep-alive comment
(``SSE_KEEPALIVE_SECONDS``). Per connection it holds at most one batch plus what the layer
queues for it; under daphne, a reader slower than the stream is paused at
``SEND_BUFFER_BYTES`` of unsent data and caught up from the log when it drains (this needs
:func:`expose_transport` around the HTTP application).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse

from agent_channels.access import get_access_policy
from agent_channels.channel.log import read
from agent_channels.channel.names import InvalidChannelName, event_group, validate_name
from agent_channels.channel.oversize import fit_frame
from agent_channels.channel.receiving import receive
from agent_channels.conf import get_config
from agent_channels.models import Channel
from agent_channels.views import events as json_events
from agent_channels.views.http import error as _error
from agent_channels.ws.backpressure import find_transport, pending_bytes
from agent_channels.ws.refresh import track, untrack
from agent_channels.ws.sockets import SocketSlots

__all__ = [
    "TRANSPORT_SCOPE_KEY",
    "events",
    "expose_transport",
    "stream_events",
    "wants_event_stream",
]

logger = logging.getLogger(__name__)

#: The scope key :func:`expose_transport` stores the server's transport under.
TRANSPORT_SCOPE_KEY = "agent_channels.transport"
_BACKLOG_POLL_SECONDS = 0.05

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def expose_transport(app: ASGIApp) -> ASGIApp:
    """Wrap your HTTP ASGI application so event streams can see how much the server still
    buffers for a slow reader (daphne only; elsewhere this changes nothing)::

        "http": expose_transport(django_asgi_app),
    """

    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            scope = {**scope, TRANSPORT_SCOPE_KEY: find_transport(send)}
        await app(scope, receive, send)

    return wrapped


def wants_event_stream(request: HttpRequest) -> bool:
    """Whether the request asks for ``text/event-stream`` (an EventSource always does)."""
    return "text/event-stream" in request.headers.get("Accept", "")


def _position(request: HttpRequest) -> tuple[int | None, str | None]:
    """``(since, None)`` from Last-Event-ID or ``?since=``, or ``(None, error message)``."""
    header = request.headers.get("Last-Event-ID")
    value, name = (header, "Last-Event-ID") if header else (request.GET.get("since"), "since")
    if value is None or value == "":
        return None, None
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        return None, f"'{name}' must be a non-negative integer."
    return int(value), None


def _sse(frame_text: str, seq: int, name: str) -> str:
    # The frame is compact JSON: no newlines, so one data line carries it.
    return f"id: {seq}\nevent: {name}\ndata: {frame_text}\n\n"


def _event_sse(channel: str, frame: dict[str, Any], limit: int) -> str:
    # An event over MAX_SENT_FRAME_BYTES goes out as a placeholder, as over WebSockets.
    text = fit_frame(channel, json.dumps(frame, ensure_ascii=False, separators=(",", ":")), limit)
    return _sse(text, frame["seq"], frame["event"])


def _head(name: str) -> tuple[int | None, int, int]:
    row = Channel.objects.filter(name=name).values_list("id", "last_seq", "pruned_seq").first()
    return (row[0], row[1], row[2]) if row is not None else (None, 0, 0)


async def events(request: HttpRequest, channel: str) -> HttpResponseBase:
    """``<channel>/events/``: an event stream for ``Accept: text/event-stream``, else a JSON page."""
    if wants_event_stream(request) and request.method == "GET":
        return await stream_events(request, channel)
    return await sync_to_async(json_events.events)(request, channel)


async def stream_events(request: HttpRequest, channel: str) -> HttpResponseBase:
    """The event-stream answer to ``GET <channel>/events/`` (errors before it are JSON)."""
    if request.method != "GET":
        response = _error(405, "method_not_allowed", "Use GET.")
        response["Allow"] = "GET, HEAD"
        return response
    try:
        name = validate_name(channel)
    except InvalidChannelName as exc:
        return _error(400, "invalid_channel", str(exc))
    since, problem = _position(request)
    if problem is not None:
        return _error(400, "invalid_parameter", problem)
    user = await request.auser()
    if not await sync_to_async(get_access_policy().can_read)(user, name):
        if not user.is_authenticated:
            return _error(401, "unauthenticated", "Log in to read this channel.")
        return _error(403, "forbidden", "You may not read this channel.")
    _, head, pruned = await sync_to_async(_head)(name)
    if since is not None and since < pruned:
        return _error(
            410, "history_pruned", f"Events up to seq {pruned} were pruned.", first_seq=pruned + 1
        )
    if since is not None and since > head:
        return _error(
            400, "since_ahead", f"since={since} is past the newest event ({head}).", last_seq=head
        )
    start = pruned if since is None else since
    # A stream holds what a WebSocket holds: it counts against the same per-user limit.
    slots = SocketSlots()
    if not await slots.take(user, get_config()["MAX_SOCKETS_PER_USER"]):
        return _error(
            429,
            "too_many_sockets",
            "You have too many connections open; close some (other tabs) and reconnect.",
        )
    scope = getattr(request, "scope", {})  # an ASGIRequest's; WSGI requests have none
    stream = EventStream(name, start, scope.get(TRANSPORT_SCOPE_KEY), slots)
    streaming = _CountedStream(
        slots, asyncio.get_running_loop(), stream.run(), content_type="text/event-stream"
    )
    streaming["Cache-Control"] = "no-cache"
    # nginx buffers proxied responses by default, which would hold events back.
    streaming["X-Accel-Buffering"] = "no"
    return streaming


class _CountedStream(StreamingHttpResponse):
    """Gives the stream's slot back when the server closes the response, which it does
    even when the client left before the first byte (the generator never ran then)."""

    def __init__(
        self, slots: SocketSlots, loop: asyncio.AbstractEventLoop, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._slots, self._loop = slots, loop

    def close(self) -> None:
        super().close()
        self._slots.give_back_soon(self._loop)


class EventStream:
    """One SSE connection: sends events after ``sent`` from the log, woken by the layer."""

    def __init__(
        self, name: str, sent: int, transport: Any, slots: SocketSlots | None = None
    ) -> None:
        self.slots = slots or SocketSlots()
        self.name = name
        self.sent = sent
        self.transport = transport
        self.config = get_config()
        self.layer = get_channel_layer(self.config["CHANNEL_LAYER"])
        self.channel_id: int | None = None
        self.known_last = sent
        # What the group refresher (agent_channels.ws.refresh) needs to keep it in its group.
        self.channel = name
        self.channel_layer = self.layer
        self.channel_name = ""
        self.group: str | None = None

    def heads_known(self, last_seq: int) -> None:
        """From the group refresher: the log's newest seq (read on the next wake-up)."""
        self.known_last = max(self.known_last, last_seq)

    async def run(self) -> AsyncIterator[str]:
        group = event_group(self.name)
        self.slots.keep()
        reply_channel = await self.layer.new_channel() if self.layer is not None else None
        if reply_channel is not None:
            await self.layer.group_add(group, reply_channel)
            self.channel_name, self.group = reply_channel, group
            track(self)
        try:
            # EventSource reconnects after this many ms; the first bytes also flush headers.
            label = json.dumps(self.name, ensure_ascii=True)
            yield f"retry: 2000\n: stream of {label} from seq {self.sent}\n\n"
            async for chunk in self._events(reply_channel):
                yield chunk
        finally:
            untrack(self)
            await self.slots.give_back()
            if reply_channel is not None:
                await self.layer.group_discard(group, reply_channel)

    async def _events(self, reply_channel: str | None) -> AsyncIterator[str]:
        keepalive = float(self.config["SSE_KEEPALIVE_SECONDS"])
        quiet = self.config["HEAD_CHECK_MS"] / 1000.0
        check_head = quiet > 0
        await self._refresh_head()
        while True:
            # Catch up from the log to the newest seq known.
            while self.sent < self.known_last:
                if self._backlogged():
                    # The reader is slow: hold nothing for it; read the log when it drains.
                    await asyncio.sleep(_BACKLOG_POLL_SECONDS)
                    continue
                if self.channel_id is None:
                    await self._refresh_head()
                    if self.channel_id is None:  # pragma: no cover - a head > 0 has a row
                        break
                events = await sync_to_async(read)(
                    self.channel_id, self.sent, self.known_last, self.config["REPLAY_BATCH_SIZE"]
                )
                if not events or events[0].seq != self.sent + 1:
                    _, _, pruned = await sync_to_async(_head)(self.name)
                    yield self._gone(pruned)
                    return
                self.sent = events[-1].seq
                limit = self.config["MAX_SENT_FRAME_BYTES"]
                yield "".join(_event_sse(self.name, event.to_frame(), limit) for event in events)
            # Wait for news: a layer message, the quiet-time head check, or the keep-alive.
            message = await self._receive(reply_channel, quiet if check_head else keepalive)
            if message is None:
                if not check_head:
                    yield ": keep-alive\n\n"
                check_head = False
                # The layer may have dropped the newest events: ask the log.
                await self._refresh_head()
                continue
            check_head = quiet > 0
            texts, first, last = message.get("texts"), message.get("first"), message.get("last")
            if (
                isinstance(texts, list)
                and first == self.sent + 1
                and self.sent == self.known_last
                and not self._backlogged()
            ):
                # The frames follow on: send them as the layer carried them, no query.
                chunk = "".join(
                    _sse(text, self.sent + 1 + offset, json.loads(text)["event"])
                    for offset, text in enumerate(texts)
                )
                self.sent += len(texts)
                self.known_last = self.sent
                yield chunk
            if isinstance(last, int):
                self.known_last = max(self.known_last, last)

    async def _refresh_head(self) -> None:
        channel_id, head, _ = await sync_to_async(_head)(self.name)
        self.channel_id = channel_id
        self.known_last = max(self.known_last, head)

    async def _receive(self, reply_channel: str | None, timeout: float) -> dict[str, Any] | None:
        if reply_channel is None:
            await asyncio.sleep(timeout)
            return None
        return await receive(self.layer, reply_channel, timeout)

    def _backlogged(self) -> bool:
        pending = pending_bytes(self.transport)
        return pending is not None and pending > self.config["SEND_BUFFER_BYTES"]

    def _gone(self, pruned: int) -> str:
        logger.info("agent_channels: an event stream of %r lost events to pruning", self.name)
        frame = {
            "type": "error",
            "code": "history_pruned",
            "message": "The events after your position were pruned; reload.",
            "first_seq": pruned + 1,
        }
        return f"event: error\ndata: {json.dumps(frame)}\n\n"
