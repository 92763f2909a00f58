"""The WebSocket consumer: follow a channel live, resume by seq, send control frames.

One connection runs one *pump* task. The layer handler only records what exists
(``known_last``) and keeps a bounded cache of live frames; the pump sends every seq
after ``sent`` exactly once and in order, from the cache when it has the frame and
from the log when it does not. Replay, the switch to live, gaps left by a layer that
dropped messages, frames too large for the wire, and a client too slow to keep up
are all the same case: the pump reads the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from agent_channels import close_codes
from agent_channels.access import get_access_policy
from agent_channels.backpressure import find_transport, pending_bytes
from agent_channels.conf import get_config
from agent_channels.frames import CONTROL_TYPES, ClientFrame, FrameError, parse_client_frame
from agent_channels.log import EventDraft, append, read
from agent_channels.models import Channel
from agent_channels.names import InvalidChannelName, control_group, event_group, validate_name
from agent_channels.ratelimit import TokenBucket
from agent_channels.runtime.control import after_control
from agent_channels.wire import EVENTS_MESSAGE, register_server_loop

__all__ = ["ChannelConsumer"]

logger = logging.getLogger(__name__)

CONTROL_MESSAGE = "agent_channels.control"
_BACKLOG_POLL_SECONDS = 0.05


def _dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


class ChannelConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """Serves ``ws/agent-channels/<channel>/?since=N``; see docs/protocol.rst."""

    channel: str
    channel_id: int | None
    sent: int
    known_last: int

    async def connect(self) -> None:
        self.config = get_config()
        self.pump_task: asyncio.Task[None] | None = None
        self.accepted = False
        register_server_loop(asyncio.get_running_loop())
        try:
            await self._open()
        except Exception:
            # The database or the layer failed: say so and close, never leave a dead socket.
            logger.exception("agent_channels: opening %r failed", getattr(self, "channel", "?"))
            if not self.accepted:
                await self.accept()
            await self._fail(
                close_codes.INTERNAL_ERROR,
                "unavailable",
                "The server cannot serve this channel right now; reconnect later.",
            )

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        self.accepted = True
        await super().accept(subprotocol, headers)

    async def _open(self) -> None:
        from agent_channels.origins import origin_allowed

        if not origin_allowed(self.scope):
            return await self._deny(
                close_codes.FORBIDDEN,
                "origin_not_allowed",
                "This page's Origin may not open this socket.",
            )
        try:
            self.channel = validate_name(self.scope["url_route"]["kwargs"]["channel"])
        except InvalidChannelName as exc:
            return await self._deny(close_codes.BAD_REQUEST, "invalid_channel", str(exc))
        try:
            since = self._since()
        except ValueError as exc:
            return await self._deny(close_codes.BAD_REQUEST, "invalid_since", str(exc))
        self.user = self.scope.get("user")
        can_read, self.can_send = await self._authorize()
        if not can_read:
            if self.user is None or not getattr(self.user, "is_authenticated", False):
                return await self._deny(
                    close_codes.UNAUTHENTICATED, "unauthenticated", "Log in to follow this channel."
                )
            return await self._deny(
                close_codes.FORBIDDEN, "forbidden", "You may not follow this channel."
            )

        # Join before reading the head: whatever commits after the read arrives live.
        self.group = event_group(self.channel)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        self.channel_id, last_seq, pruned_seq = await self._head()
        if since is not None and since < pruned_seq:
            return await self._fail(
                close_codes.GONE,
                "history_pruned",
                f"Events up to seq {pruned_seq} were pruned; "
                f"resume from since={pruned_seq} or later.",
                first_seq=pruned_seq + 1,
            )
        if since is not None and since > last_seq:
            return await self._fail(
                close_codes.BAD_REQUEST,
                "since_ahead",
                f"since={since} is past the newest event ({last_seq}); "
                "the channel may have been deleted and recreated.",
                last_seq=last_seq,
            )
        self.sent = pruned_seq if since is None else since
        self.known_last = last_seq
        self.cache: dict[int, str] = {}
        self.wake = asyncio.Event()
        self.wake.set()
        self.bucket = TokenBucket(self.config["CLIENT_RATE"], self.config["CLIENT_BURST"])
        self.transport = find_transport(self.base_send)
        self.behind = False
        self.check_head = False
        await self.send(
            text_data=_dumps(
                {
                    "type": "hello",
                    "channel": self.channel,
                    "since": self.sent,
                    "last_seq": last_seq,
                    "can_send": self.can_send,
                }
            )
        )
        self.pump_task = asyncio.create_task(self._pump())

    def _since(self) -> int | None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        values = query.get("since")
        if not values:
            return None
        value = values[-1]
        if not (value.isascii() and value.isdigit()) or len(value) > 18:
            raise ValueError("since must be a non-negative integer.")
        return int(value)

    async def _authorize(self) -> tuple[bool, bool]:
        result: tuple[bool, bool] = await database_sync_to_async(self._authorize_sync)()
        return result

    def _authorize_sync(self) -> tuple[bool, bool]:
        policy = get_access_policy()
        if not policy.can_read(self.user, self.channel):
            return False, False
        return True, policy.can_send(self.user, self.channel)

    async def _head(self) -> tuple[int | None, int, int]:
        result: tuple[int | None, int, int] = await database_sync_to_async(self._head_sync)()
        return result

    def _head_sync(self) -> tuple[int | None, int, int]:
        row = (
            Channel.objects.filter(name=self.channel)
            .values_list("id", "last_seq", "pruned_seq")
            .first()
        )
        return row if row is not None else (None, 0, 0)

    async def _deny(self, code: int, error: str, message: str) -> None:
        # Accept, explain, close: a socket refused during the handshake reaches browsers as
        # an anonymous 1006, while a close code after accept can be shown to the user.
        await self.accept()
        await self._fail(code, error, message)

    async def _fail(self, code: int, error: str, message: str, **extra: Any) -> None:
        await self.send(
            text_data=_dumps({"type": "error", "code": error, "message": message, **extra})
        )
        await self.close(code)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # The server may cancel the instance without a disconnect (shutdown, timeouts).
            if getattr(self, "pump_task", None) is not None:
                assert self.pump_task is not None
                self.pump_task.cancel()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "pump_task", None) is not None:
            assert self.pump_task is not None
            self.pump_task.cancel()
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale DB connections (a thread hop) before every message; live
        # event notifications do not touch the database, so they skip that.
        if message["type"] == EVENTS_MESSAGE:
            await self.agent_channels_events(message)
        else:
            await super().dispatch(message)

    # -- live events -------------------------------------------------------------------

    async def agent_channels_events(self, message: dict[str, Any]) -> None:
        if not hasattr(self, "wake"):
            return
        first, last, texts = message["first"], message["last"], message.get("texts")
        if texts is not None:
            room = self.config["LIVE_CACHE_FRAMES"] - len(self.cache)
            for offset, text in enumerate(texts):
                seq = first + offset
                if seq > self.sent and room > 0:
                    self.cache[seq] = text
                    room -= 1
        if last > self.known_last:
            self.known_last = last
        self.check_head = True
        self.wake.set()

    def _backlogged(self) -> bool:
        pending = pending_bytes(self.transport)
        return pending is not None and pending > self.config["SEND_BUFFER_BYTES"]

    async def _wait_for_work(self) -> None:
        """Wait for news; after a burst goes quiet, ask the log once whether the layer
        dropped its tail (a dropped last event would otherwise wait for the next one)."""
        quiet = self.config["HEAD_CHECK_MS"] / 1000.0
        while not self.wake.is_set():
            if not (self.check_head and quiet > 0):
                await self.wake.wait()
                break
            try:
                await asyncio.wait_for(self.wake.wait(), quiet)
            except TimeoutError:
                self.check_head = False
                _, head, _ = await self._head()
                if head > self.known_last:
                    self.known_last = head
                    self.wake.set()
        self.wake.clear()

    async def _pump(self) -> None:
        try:
            while True:
                await self._wait_for_work()
                while self.sent < self.known_last:
                    if self._backlogged():
                        # The client is behind: hold nothing for it, reread the log later.
                        if not self.behind:
                            self.behind = True
                            logger.info(
                                "agent_channels: a client of %r fell behind at seq %d; "
                                "it will catch up from the log",
                                self.channel,
                                self.sent,
                            )
                        self.cache.clear()
                        await asyncio.sleep(_BACKLOG_POLL_SECONDS)
                        continue
                    self.behind = False
                    text = self.cache.pop(self.sent + 1, None)
                    if text is not None:
                        await self.send(text_data=text)
                        self.sent += 1
                        continue
                    if not await self._send_from_log():
                        return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("agent_channels: pump for %r failed", self.channel)
            await self._fail(
                close_codes.INTERNAL_ERROR,
                "internal_error",
                "The server failed; reconnect with since=<last seq>.",
            )

    async def _send_from_log(self) -> bool:
        if self.channel_id is None:
            self.channel_id, _, _ = await self._head()
        assert self.channel_id is not None
        events = await database_sync_to_async(read)(
            self.channel_id, self.sent, self.known_last, self.config["REPLAY_BATCH_SIZE"]
        )
        if not events or events[0].seq != self.sent + 1:
            _, _, pruned_seq = await self._head()
            await self._fail(
                close_codes.GONE,
                "history_pruned",
                f"Events up to seq {pruned_seq} were pruned while you were behind.",
                first_seq=pruned_seq + 1,
            )
            return False
        for event in events:
            await self.send(text_data=_dumps(event.to_frame()))
            self.sent = event.seq
            if self._backlogged():
                break  # the pump waits for the client before reading further
        for seq in [s for s in self.cache if s <= self.sent]:
            del self.cache[seq]
        return True

    # -- client frames -----------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not hasattr(self, "bucket"):
            return
        try:
            if not self.bucket.allow():
                raise FrameError("rate_limited", "Too many frames; slow down.")
            frame = parse_client_frame(text_data, bytes_data, self.config["MAX_CLIENT_FRAME_BYTES"])
        except FrameError as exc:
            await self.send(text_data=_dumps(exc.to_frame()))
            return
        if frame.type == "ping":
            await self.send(text_data=_dumps({"type": "pong", "id": frame.id}))
            return
        if not self.can_send:
            await self.send(
                text_data=_dumps(
                    FrameError(
                        "forbidden", "You may follow this channel but not send to it."
                    ).to_frame(frame.id)
                )
            )
            return
        assert frame.type in CONTROL_TYPES
        try:
            seq = await self._persist(frame)
        except Exception:
            logger.exception("agent_channels: persisting a %s frame failed", frame.type)
            await self.send(
                text_data=_dumps(
                    FrameError(
                        "unavailable", "The frame could not be stored; send it again."
                    ).to_frame(frame.id)
                )
            )
            return
        try:
            await self._dispatch_control(frame, seq)
        except Exception:
            # It is in the log: a runtime that missed it live still finds it there.
            logger.exception(
                "agent_channels: handing %s #%d to the runtime failed", frame.type, seq
            )
        if frame.id is not None:
            await self.send(text_data=_dumps({"type": "ack", "id": frame.id, "seq": seq}))

    async def _dispatch_control(self, frame: ClientFrame, seq: int) -> None:
        await self.channel_layer.group_send(
            control_group(self.channel),
            {
                "type": CONTROL_MESSAGE,
                "channel": self.channel,
                "seq": seq,
                "kind": frame.type,
                "data": frame.data,
                "id": frame.id,
            },
        )
        # Runs in this process, and runs that no worker holds (waiting, queued).
        await database_sync_to_async(after_control)(
            self.channel, seq, frame.type, frame.data, frame.id
        )

    async def _persist(self, frame: ClientFrame) -> int:
        seq: int = await database_sync_to_async(self._persist_sync)(frame)
        return seq

    def _persist_sync(self, frame: ClientFrame) -> int:
        user_id = getattr(self.user, "pk", None)
        data = {"data": frame.data, "id": frame.id, "user": user_id}
        return append(self.channel, [EventDraft(f"client.{frame.type}", data)])[0].seq
