"""The WebSocket consumer: follow a channel live, resume by seq, send control frames.

``connect`` reads as the protocol: check the Origin, the name, ``since`` and the
access policy; join the group; accept; say hello; start the :class:`~.pump.Pump`
that sends every event after ``since`` exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from importlib import import_module
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user
from django.db import close_old_connections

from agent_channels.access import get_access_policy
from agent_channels.channel.connections import TRANSIENT_ERRORS
from agent_channels.channel.control import asend_control
from agent_channels.channel.names import InvalidChannelName, event_group, validate_name
from agent_channels.channel.presence import PresenceTracker, wants_presence
from agent_channels.channel.receiving import dispatch_many
from agent_channels.channel.wire import EVENTS_MESSAGE, register_server_loop
from agent_channels.conf import get_config
from agent_channels.ws import close_codes
from agent_channels.ws.backpressure import find_transport, server_send
from agent_channels.ws.frames import CONTROL_TYPES, FrameError, parse_client_frame
from agent_channels.ws.origins import origin_allowed
from agent_channels.ws.pump import Head, HistoryPruned, Pump, dumps, read_head
from agent_channels.ws.ratelimit import TokenBucket
from agent_channels.ws.refresh import track, untrack
from agent_channels.ws.sockets import SocketSlots

__all__ = ["ChannelConsumer"]

logger = logging.getLogger(__name__)


class ChannelConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """Serves ``ws/agent-channels/<channel>/?since=N``; see docs/protocol.rst."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = get_config()
        self.channel = ""
        self.group: str | None = None
        self.user: Any = None
        self.can_send = False
        self.accepted = False
        self.bucket = TokenBucket(self.config["CLIENT_RATE"], self.config["CLIENT_BURST"])
        #: Set once the connection is open; frames and events before that are ignored.
        self.pump: Pump | None = None
        self.pump_task: asyncio.Task[None] | None = None
        self.presence_task: asyncio.Task[None] | None = None
        self.recheck_task: asyncio.Task[None] | None = None
        self.revoked = False
        self.slots = SocketSlots()
        self._server_send: Any = None

    async def connect(self) -> None:
        register_server_loop(asyncio.get_running_loop())
        try:
            await self._open()
        except Exception:
            # The database or the layer failed: say so and close, never leave a dead socket.
            logger.exception("agent_channels: opening %r failed", self.channel)
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
        # After the access check, so only channels the user may read are counted (and a
        # refused name answers the same however many sockets the user holds).
        if not await self.slots.take(self.user, self.config["MAX_SOCKETS_PER_USER"]):
            return await self._deny(
                close_codes.TOO_MANY,
                "too_many_sockets",
                "You have too many connections open; close some (other tabs) and reconnect.",
            )

        # Join before reading the head: whatever commits after the read arrives live.
        self.group = event_group(self.channel)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        self._server_send = server_send(self.base_send)
        channel_id, last_seq, pruned_seq = await self._head()
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
        sent = pruned_seq if since is None else since
        await self.send(
            text_data=dumps(
                {
                    "type": "hello",
                    "channel": self.channel,
                    "since": sent,
                    "last_seq": last_seq,
                    "can_send": self.can_send,
                }
            )
        )
        self.pump = Pump(
            self.channel,
            channel_id,
            sent,
            last_seq,
            self.config,
            self._send_text,
            find_transport(self.base_send),
            batch=self._flag("batch"),
        )
        self.pump_task = asyncio.create_task(self._run_pump(self.pump))
        self.slots.keep()
        track(self)
        if wants_presence(self.scope):
            tracker = PresenceTracker(
                self.channel, self.channel_name, self.user, self.can_send, self._send_text
            )
            self.presence_task = asyncio.create_task(tracker.run())
        interval = float(self.config["ACCESS_RECHECK_SECONDS"] or 0)
        if interval > 0:
            self.recheck_task = asyncio.create_task(self._recheck_every(interval))

    def _query(self) -> dict[str, list[str]]:
        return parse_qs(self.scope.get("query_string", b"").decode("latin-1"))

    def _flag(self, name: str) -> bool:
        """An opt-in query parameter: ``?batch=1``."""
        return self._query().get(name, [""])[-1] in ("1", "true")

    def _since(self) -> int | None:
        values = self._query().get("since")
        if not values:
            return None
        value = values[-1]
        if not (value.isascii() and value.isdigit()) or len(value) > 18:
            raise ValueError("since must be a non-negative integer.")
        return int(value)

    async def _authorize(self) -> tuple[bool, bool]:
        result: tuple[bool, bool] = await database_sync_to_async(self._authorize_sync)()
        return result

    def _authorize_sync(self, *, reload: bool = False) -> tuple[bool, bool]:
        if reload:
            self.user = self._current_user()
        policy = get_access_policy()
        if not policy.can_read(self.user, self.channel):
            return False, False
        return True, policy.can_send(self.user, self.channel)

    def _current_user(self) -> Any:
        """The connection's user as the database and session store see it now.

        The scope's user was loaded once at connect. With a session (AuthMiddleware), the
        session is read again from its store, so a logout, a password change or a
        deactivation (ModelBackend refuses inactive users) yields the anonymous user. Without
        one, the user row is read again.
        """
        user = self.user
        if user is None or not getattr(user, "is_authenticated", False):
            return user
        session = self.scope.get("session")
        session_key = getattr(session, "session_key", None)
        if session is not None and session_key:
            # Django's own get_user only needs request.session; a fresh store object rereads
            # the session instead of the copy loaded at connect.
            store = import_module(settings.SESSION_ENGINE).SessionStore
            request = SimpleNamespace(session=store(session_key=session_key))
            return get_user(request)  # type: ignore[arg-type]
        return type(user)._default_manager.filter(pk=user.pk).first()

    def _recheck_sync(self) -> tuple[bool, bool]:
        try:
            return self._authorize_sync(reload=True)
        finally:
            # asgiref runs this in a copy of the calling task's context, and Django keeps
            # connections per context: database_sync_to_async's own clean-up, outside that
            # copy, would miss the connection the re-check task opened and leave it open.
            close_old_connections()

    async def _recheck(self) -> bool:
        """Ask the policy again; close with 4403 and say why if the user may no longer read."""
        can_read, can_send = await database_sync_to_async(self._recheck_sync)()
        self.can_send = can_send
        if can_read:
            return True
        if self.revoked:  # the other path (frame or timer) already said so and closed
            return False
        self.revoked = True
        self._stop_pump()
        await self._fail(
            close_codes.FORBIDDEN,
            "access_revoked",
            "You may no longer follow this channel (logged out, deactivated or access removed).",
        )
        return False

    async def _recheck_every(self, interval: float) -> None:
        # One policy call per socket per interval, never one per event.
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self._recheck():
                    return
            except asyncio.CancelledError:
                raise
            except Exception:
                # A database hiccup is no reason to cut readers off; the next pass asks again.
                logger.exception("agent_channels: re-checking access to %r failed", self.channel)

    async def _head(self) -> Head:
        return await read_head(self.channel)

    async def _deny(self, code: int, error: str, message: str) -> None:
        # Accept, explain, close: a socket refused during the handshake reaches browsers as
        # an anonymous 1006, while a close code after accept can be shown to the user.
        await self.accept()
        await self._fail(code, error, message)

    async def _fail(self, code: int, error: str, message: str, **extra: Any) -> None:
        await self.send(
            text_data=dumps({"type": "error", "code": error, "message": message, **extra})
        )
        await self.close(code)

    async def _send_text(self, text: str) -> None:
        # Straight to the server, past AsyncWebsocketConsumer.send and the session wrapper:
        # the pump calls this once per event on replay, where each layer shows.
        await (self._server_send or self.base_send)({"type": "websocket.send", "text": text})

    async def _run_pump(self, pump: Pump) -> None:
        try:
            await pump.run()
        except asyncio.CancelledError:
            raise
        except HistoryPruned as exc:
            await self._fail(
                close_codes.GONE,
                "history_pruned",
                f"Events up to seq {exc.pruned_seq} were pruned while you were behind.",
                first_seq=exc.pruned_seq + 1,
            )
        except TRANSIENT_ERRORS:
            logger.warning("agent_channels: pump for %r lost the database", self.channel)
            await self._fail(
                close_codes.INTERNAL_ERROR,
                "unavailable",
                "The server cannot reach its database; reconnect with since=<last seq>.",
            )
        except Exception:
            logger.exception("agent_channels: pump for %r failed", self.channel)
            await self._fail(
                close_codes.INTERNAL_ERROR,
                "internal_error",
                "The server failed; reconnect with since=<last seq>.",
            )

    def heads_known(self, last_seq: int) -> None:
        """From the group refresher: the log's newest seq (the layer may have lost some)."""
        if self.pump is not None and last_seq > self.pump.known_last:
            self.pump.announce(last_seq, last_seq, None)

    def _stop_pump(self) -> None:
        untrack(self)
        tasks = (self.pump_task, self.presence_task, self.recheck_task)
        for task in tasks:
            if task is not None and task is not asyncio.current_task():
                task.cancel()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self._serve(scope, receive, send)
        finally:
            # The server may cancel the instance without a disconnect (shutdown, timeouts).
            self._stop_pump()
            await self.slots.give_back()

    async def _serve(self, scope: Any, receive: Any, send: Any) -> None:
        """channels' ``AsyncConsumer.__call__``, dispatching with
        :func:`~agent_channels.channel.receiving.dispatch_many`: channels waits for its
        layer receive to end when the socket closes, and a bare channels-redis receive can
        ignore that cancellation and keep the consumer alive for good."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.base_send = send
        sources = [receive]
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            sources.append(functools.partial(self.channel_layer.receive, self.channel_name))
        with contextlib.suppress(StopConsumer):
            await dispatch_many(sources, self.dispatch)

    async def disconnect(self, code: int) -> None:
        self._stop_pump()
        await self.slots.give_back()
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale DB connections (a thread hop) before every message; live
        # event notifications do not touch the database, so they skip that.
        if message["type"] == EVENTS_MESSAGE:
            await self.agent_channels_events(message)
        else:
            await super().dispatch(message)

    async def agent_channels_events(self, message: dict[str, Any]) -> None:
        if self.pump is not None:
            self.pump.announce(message["first"], message["last"], message.get("texts"))

    # -- client frames -----------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.pump is None or self.revoked:
            return
        try:
            if not self.bucket.allow():
                raise FrameError("rate_limited", "Too many frames; slow down.")
            frame = parse_client_frame(text_data, bytes_data, self.config["MAX_CLIENT_FRAME_BYTES"])
        except FrameError as exc:
            await self.send(text_data=dumps(exc.to_frame()))
            return
        if frame.type == "ping":
            await self.send(text_data=dumps({"type": "pong", "id": frame.id}))
            return
        try:
            allowed = await self._recheck()
        except Exception:
            logger.exception("agent_channels: re-checking access to %r failed", self.channel)
            await self._reply_error(
                "unavailable", "The frame could not be checked; send it again.", frame.id
            )
            return
        if not allowed:
            return
        if not self.can_send:
            await self._reply_error(
                "forbidden", "You may follow this channel but not send to it.", frame.id
            )
            return
        assert frame.type in CONTROL_TYPES
        try:
            seq = await asend_control(
                self.channel, frame.type, frame.data, frame_id=frame.id, user=self.user
            )
        except Exception:
            logger.exception("agent_channels: persisting a %s frame failed", frame.type)
            await self._reply_error(
                "unavailable", "The frame could not be stored; send it again.", frame.id
            )
            return
        if frame.id is not None:
            await self.send(text_data=dumps({"type": "ack", "id": frame.id, "seq": seq}))

    async def _reply_error(self, code: str, message: str, frame_id: Any) -> None:
        await self.send(text_data=dumps(FrameError(code, message).to_frame(frame_id)))
