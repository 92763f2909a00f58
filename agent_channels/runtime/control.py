"""Control messages (input, interrupt, cancel) on their way to a running agent.

A client frame is persisted as a ``client.*`` event and then sent to the channel's
control group on the channel layer. Each worker process listens on that group for the
channels whose runs it is executing, with one layer channel and one long-lived event
loop per process, and hands each message to the run's :class:`Inbox`. No database
polling: the only reads are one catch-up query when a run subscribes, for messages sent
before the subscription existed, and one after the layer failed (its memberships may be
gone, and with them messages sent meanwhile).

The in-memory layer cannot cross threads or processes, so with it (and always, for
runs in the same process) messages are also delivered directly; inboxes drop a seq
they have already seen, so a message arriving both ways counts once.

A Redis that restarts empty forgets group memberships, and whatever was sent while the
process was not a member is lost on the wire. Every ``GROUP_REFRESH_SECONDS`` the
listener joins its groups again (``group_add`` is idempotent) and reads the control
events its runs have not seen from the log, one query for all of them: a message the
layer lost reaches its run within that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from channels.layers import InMemoryChannelLayer, channel_layers, get_channel_layer
from django.db import close_old_connections
from django.db.models import Q

from agent_channels.channel.control import CONTROL_MESSAGE, control_message
from agent_channels.channel.names import control_group
from agent_channels.conf import get_config
from agent_channels.models import Event
from agent_channels.per_process import PerProcess, background_loop
from agent_channels.runtime import lifecycle

__all__ = [
    "CONTROL_EVENTS",
    "ControlMessage",
    "Inbox",
    "deliver_local",
    "get_listener",
    "on_control_sent",
]

logger = logging.getLogger(__name__)

#: Persisted events that carry control to a run (read once when a run subscribes).
CONTROL_EVENTS = ("client.interrupt", "client.cancel", "control.supersede")


@dataclass(frozen=True)
class ControlMessage:
    kind: str
    seq: int
    data: Any = None
    id: Any = None
    #: ``time.time()`` when this process saw it: for measuring send-to-agent latency.
    seen_at: float = field(default_factory=time.time)


class Inbox:
    """What a running agent has been told; written by the listener, read by the agent."""

    def __init__(self, channel: str, after_seq: int, limit: int | None = None) -> None:
        self.channel = channel
        #: The log has been read through this seq: every control event up to it was seen.
        self.last_seq = after_seq
        #: Seqs above ``last_seq`` that arrived live. A live message can overtake one the
        #: layer lost, so a high-water mark alone would make the catch-up drop the lost one.
        self._seen: set[int] = set()
        self.wakeup = threading.Event()
        self._lock = threading.Lock()
        self.cancel: ControlMessage | None = None
        self.superseded: ControlMessage | None = None
        #: Interrupts and inputs the agent has not taken yet, each at most ``limit``
        #: (``MAX_PENDING_CONTROL``); past it a message is refused and listed in
        #: :attr:`rejected`, which the run publishes as ``control.rejected`` events.
        self.limit = int(get_config()["MAX_PENDING_CONTROL"] if limit is None else limit)
        self.interrupts: deque[ControlMessage] = deque()
        self.inputs: deque[ControlMessage] = deque()
        self.rejected: deque[ControlMessage] = deque(maxlen=max(1, self.limit))
        self._listeners: list[Callable[[ControlMessage], None]] = []

    def deliver(self, message: ControlMessage) -> bool:
        with self._lock:
            if message.seq <= self.last_seq or message.seq in self._seen:
                return False
            self._seen.add(message.seq)
            if message.kind == "cancel":
                self.cancel = message
            elif message.kind == "supersede":
                self.superseded = message
            elif message.kind in ("interrupt", "input"):
                queue = self.interrupts if message.kind == "interrupt" else self.inputs
                if len(queue) >= self.limit:
                    self.rejected.append(message)
                    return False
                queue.append(message)
            else:
                return False
            listeners = list(self._listeners)
        self.wakeup.set()
        for listener in listeners:
            try:
                listener(message)
            except Exception:
                logger.exception("agent_channels: control listener failed")
        return True

    def read_through(self, seq: int) -> None:
        """The log was read up to ``seq``; seqs commit in order per channel, so no control
        event at or below it can still appear."""
        with self._lock:
            if seq > self.last_seq:
                self.last_seq = seq
                self._seen = {seen for seen in self._seen if seen > seq}

    def on_message(self, listener: Callable[[ControlMessage], None]) -> Callable[[], None]:
        """Call ``listener`` from the delivering thread; returns a function that removes it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def take_rejected(self) -> list[ControlMessage]:
        """The refused messages since the last call (for the run to publish)."""
        with self._lock:
            taken = list(self.rejected)
            self.rejected.clear()
        return taken

    def drop_inputs(self, until_seq: int) -> None:
        """Forget inputs up to ``until_seq``: the run took its input from the log."""
        with self._lock:
            while self.inputs and self.inputs[0].seq <= until_seq:
                self.inputs.popleft()

    @property
    def stopping(self) -> bool:
        return self.cancel is not None or self.superseded is not None

    @property
    def pending(self) -> bool:
        return self.stopping or bool(self.interrupts)


_inboxes: dict[str, list[Inbox]] = {}
_inboxes_lock = threading.Lock()


def register_inbox(inbox: Inbox) -> None:
    with _inboxes_lock:
        _inboxes.setdefault(inbox.channel, []).append(inbox)


def unregister_inbox(inbox: Inbox) -> bool:
    """Remove ``inbox``; True when it was the channel's last one in this process."""
    with _inboxes_lock:
        inboxes = _inboxes.get(inbox.channel, [])
        if inbox in inboxes:
            inboxes.remove(inbox)
        if not inboxes:
            _inboxes.pop(inbox.channel, None)
            return True
        return False


def deliver_local(message: dict[str, Any]) -> int:
    """Hand a layer control message to this process's inboxes; returns how many took it."""
    try:
        item = ControlMessage(
            kind=str(message["kind"]),
            seq=int(message["seq"]),
            data=message.get("data"),
            id=message.get("id"),
        )
        channel = str(message["channel"])
    except (KeyError, TypeError, ValueError):
        logger.warning("agent_channels: malformed control message dropped: %.200r", message)
        return 0
    with _inboxes_lock:
        inboxes = list(_inboxes.get(channel, ()))
    return sum(inbox.deliver(item) for inbox in inboxes)


def catch_up(inbox: Inbox, channel_id: int) -> None:
    """Deliver control events persisted before the subscription was in place."""
    events = Event.objects.filter(
        channel_id=channel_id, seq__gt=inbox.last_seq, name__in=CONTROL_EVENTS
    ).order_by("seq")
    _deliver_events(inbox, events)


def _deliver_events(inbox: Inbox, events: Iterable[Event]) -> None:
    newest = 0
    for event in events:
        data = event.data if isinstance(event.data, dict) else {}
        inbox.deliver(
            ControlMessage(
                kind=event.name.split(".", 1)[1],
                seq=event.seq,
                data=data.get("data"),
                id=data.get("id"),
            )
        )
        newest = event.seq
    inbox.read_through(newest)


def catch_up_all() -> int:
    """Deliver the control events that this process's runs have not seen, from the log.

    One query for every channel with a run here; returns how many messages were new.
    """
    with _inboxes_lock:
        after = {
            channel: min(inbox.last_seq for inbox in inboxes)
            for channel, inboxes in _inboxes.items()
            if inboxes
        }
    if not after:
        return 0
    where = Q()
    for channel, seq in after.items():
        where |= Q(channel__name=channel, seq__gt=seq)
    rows = (
        Event.objects.filter(where, name__in=CONTROL_EVENTS)
        .order_by("seq")
        .values_list("channel__name", "seq", "name", "data")
    )
    delivered = 0
    newest: dict[str, int] = {}
    for channel, seq, name, data in rows:
        payload = data if isinstance(data, dict) else {}
        delivered += deliver_local(
            {
                "channel": channel,
                "seq": seq,
                "kind": name.split(".", 1)[1],
                "data": payload.get("data"),
                "id": payload.get("id"),
            }
        )
        newest[channel] = seq
    with _inboxes_lock:
        read = [(inbox, newest[name]) for name in newest for inbox in _inboxes.get(name, ())]
    for inbox, seq in read:
        inbox.read_through(seq)
    return delivered


def _catch_up_all_in_thread() -> int:
    try:
        return catch_up_all()
    finally:
        close_old_connections()


class ControlListener:
    """This process's subscription to the control groups of the runs it executes.

    A membership lives in the layer, which can forget it: a Redis restarted empty, a
    failover that lost the newest writes, ``group_expiry`` passing while a run lives on.
    So the listener joins its groups again, and reads the control events it may have missed
    from the log, after any failed receive and every ``GROUP_REFRESH_SECONDS`` (at most
    ``group_expiry / 2``).
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias
        shared = get_channel_layer(alias)
        # An instance of our own: channels-redis lets only one event loop receive() per
        # layer instance, and in a web process the server's consumers receive on the
        # shared one.
        self.layer = (
            None
            if shared is None or isinstance(shared, InMemoryChannelLayer)
            else channel_layers.make_backend(alias)
        )
        self.enabled = self.layer is not None and not isinstance(self.layer, InMemoryChannelLayer)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._name: str | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        #: The channels whose control groups this process belongs to (touched on the loop).
        self.groups: set[str] = set()
        self._lost: asyncio.Event | None = None

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = background_loop()
        return self._loop

    def subscribe(self, channel: str, timeout: float = 10.0) -> None:
        """Join the channel's control group; returns once the layer has the membership."""
        if not self.enabled:
            return
        # Retried until the timeout: a Redis that restarts for a second must not fail the
        # run it is starting (the chaos suite, tests/test_chaos_streams.py, found that).
        deadline = time.monotonic() + timeout
        while True:
            future = asyncio.run_coroutine_threadsafe(self._subscribe(channel), self._get_loop())
            try:
                future.result(max(0.1, deadline - time.monotonic()))
                return
            except Exception:
                if time.monotonic() + 0.5 >= deadline:
                    raise
                logger.warning(
                    "agent_channels: joining %r's control group failed; retrying", channel
                )
                time.sleep(0.5)

    def unsubscribe(self, channel: str) -> None:
        if not self.enabled or self._loop is None:
            return
        # Fire and forget: a late message for a finished run finds no inbox and is dropped.
        asyncio.run_coroutine_threadsafe(self._unsubscribe(channel), self._loop)

    async def _subscribe(self, channel: str) -> None:
        assert self.layer is not None
        if self._name is None:
            self._name = await self.layer.new_channel("agent-channels-control.")
            self._lost = asyncio.Event()
            loop = asyncio.get_running_loop()
            self._receiver = loop.create_task(self._receive(self._name))
            self._keeper = loop.create_task(self._keep_joined(self._name, self._lost))
        await self.layer.group_add(control_group(channel), self._name)
        self.groups.add(channel)

    async def _unsubscribe(self, channel: str) -> None:
        assert self.layer is not None
        self.groups.discard(channel)
        if self._name is not None:
            try:
                await self.layer.group_discard(control_group(channel), self._name)
            except Exception:
                logger.exception("agent_channels: leaving the control group failed")

    async def _receive(self, name: str) -> None:
        assert self.layer is not None
        while True:
            try:
                message = await self.layer.receive(name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A read timeout on an idle socket (redis-py's socket_timeout, check E004)
                # loses nothing: the message waits in the layer for the next receive.
                if "Timeout" not in type(exc).__name__:
                    logger.exception("agent_channels: control receive failed; retrying")
                    if self._lost is not None:
                        self._lost.set()  # the layer may have forgotten our groups
                    await asyncio.sleep(0.5)
                continue
            if message.get("type") == CONTROL_MESSAGE:
                deliver_local(message)

    async def _keep_joined(self, name: str, lost: asyncio.Event) -> None:
        """Join the control groups again, then read what the layer may have lost from the
        log: at once after a failed receive, and every ``GROUP_REFRESH_SECONDS`` (at most
        ``group_expiry / 2``), since a Redis restarted empty fails no receive at all."""
        assert self.layer is not None
        every = float(get_config()["GROUP_REFRESH_SECONDS"] or 0)
        expiry = getattr(self.layer, "group_expiry", None)
        if expiry:
            every = min(every, float(expiry) / 2) if every > 0 else max(1.0, float(expiry) / 2)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), every if every > 0 else None)
            if not self.groups:
                lost.clear()
                continue
            try:
                for channel in list(self.groups):
                    await self.layer.group_add(control_group(channel), name)
                lost.clear()
                # Messages sent while the membership was gone are only in the log.
                await asyncio.to_thread(_catch_up_all_in_thread)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning(
                    "agent_channels: re-joining the control groups failed; retrying", exc_info=True
                )
                lost.set()
                await asyncio.sleep(0.5)


_listener: PerProcess[ControlListener] = PerProcess(
    lambda: ControlListener(get_config()["CHANNEL_LAYER"])
)


def get_listener() -> ControlListener:
    """The process's listener (a new one after a fork: loops do not survive it)."""
    return _listener.get()


def on_control_sent(
    *, channel: str, seq: int, kind: str, data: Any, frame_id: Any = None, **kwargs: Any
) -> None:
    """Receiver of :data:`~agent_channels.channel.control.control_sent` (sync; touches the DB).

    Delivers to runs in this process, resumes a run waiting for input, and cancels
    runs that are queued or waiting (they have no process to tell).
    """
    deliver_local(control_message(channel, seq, kind, data, frame_id))
    if kind == "input":
        lifecycle.resume_waiting(channel)
    elif kind == "cancel":
        lifecycle.cancel_idle(channel, data)
