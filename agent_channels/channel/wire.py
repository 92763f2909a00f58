"""The live wire: getting committed events from any thread onto the channel layer.

Sync publishers (Celery tasks, views, the shell) must not pay for a new event loop
and Redis connection pool per event (``async_to_sync(group_send)`` per message runs at
a quarter of the speed of a long-lived loop). So each process keeps one loop for the
wire and one sender task per loop, which sends in order.

Which loop: channels-redis works from any loop, so a private daemon thread runs one.
The in-memory layer only reaches consumers on the loop that created its queues, so
for it the wire uses the server loop that consumers register on connect, and drops
the send when there is none (no consumer in this process can be listening).
Dropped or failed sends lose nothing: the log has every event, and consumers fill
gaps from it.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.core.signals import setting_changed

from agent_channels.channel.names import event_group
from agent_channels.channel.pipelining import pipelined_sender
from agent_channels.conf import get_config
from agent_channels.per_process import PerProcess, background_loop

__all__ = ["LiveWire", "get_wire", "register_server_loop", "reset_wire"]

logger = logging.getLogger(__name__)

#: The Channels message type consumers receive events under.
EVENTS_MESSAGE = "agent_channels.events"

_server_loop: asyncio.AbstractEventLoop | None = None


def register_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Tell the wire which loop the ASGI server runs consumers on (called by consumers)."""
    global _server_loop
    _server_loop = loop


def build_events_message(first_seq: int, texts: list[str]) -> dict[str, Any]:
    """The layer message announcing events ``first_seq..first_seq+len(texts)-1``.

    Frames travel as ready-made JSON text so each consumer sends them without
    re-encoding. Frames too large for the wire travel as a notification only.
    """
    limit = get_config()["MAX_WIRE_FRAME_BYTES"]
    carried = texts if sum(len(t) for t in texts) <= limit else None
    return {
        "type": EVENTS_MESSAGE,
        "first": first_seq,
        "last": first_seq + len(texts) - 1,
        "texts": carried,
    }


class LiveWire:
    """Sends layer messages in order from any thread, without blocking the caller."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.layer = get_channel_layer(alias)
        self._lock = threading.Lock()
        self._senders: set[asyncio.Task[None]] = set()
        self._queues: dict[
            asyncio.AbstractEventLoop, asyncio.Queue[tuple[str, dict[str, Any]]]
        ] = {}
        # Sends accepted but not yet handed to the layer, per loop: drain() waits on these,
        # counted here (not in the queues) so a send made a moment ago is never missed.
        self._pending: dict[asyncio.AbstractEventLoop, int] = {}
        self._idle = threading.Condition(self._lock)
        self._pipelined = pipelined_sender(self.layer)

    def _loop(self) -> asyncio.AbstractEventLoop | None:
        if isinstance(self.layer, InMemoryChannelLayer):
            loop = _server_loop
            return loop if loop is not None and not loop.is_closed() else None
        return background_loop()

    def send(self, group: str, message: dict[str, Any]) -> bool:
        """Queue ``message`` for ``group``; returns False when nothing can be listening."""
        return self.send_many([(group, message)])

    def send_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> bool:
        """Queue ``(group, message)`` pairs, in order, with one wake-up of the wire's loop
        (a busy worker's flush announces a batch on hundreds of channels at once)."""
        if self.layer is None or not items:
            return False
        loop = self._loop()
        if loop is None:
            return False
        with self._lock:
            for closed in [old for old in self._queues if old.is_closed()]:
                del self._queues[closed]
                self._pending.pop(closed, None)
            queue = self._queues.get(loop)
            start_sender = queue is None
            if queue is None:
                queue = self._queues[loop] = asyncio.Queue()
            self._pending[loop] = self._pending.get(loop, 0) + len(items)
        try:
            if start_sender:
                loop.call_soon_threadsafe(self._start_sender, loop, queue)
            loop.call_soon_threadsafe(_put_all, queue, list(items))
        except RuntimeError:  # the loop closed between the check and the call
            self._done(loop, len(items))
            return False
        return True

    def send_events(self, channel: str, first_seq: int, texts: list[str]) -> bool:
        """Announce committed events of ``channel`` to its consumers."""
        return self.send_events_many([(channel, first_seq, texts)])

    def send_events_many(self, batches: Sequence[tuple[str, int, list[str]]]) -> bool:
        """:meth:`send_events` for ``(channel, first_seq, texts)`` of several channels."""
        return self.send_many(
            [
                (event_group(channel), build_events_message(first_seq, texts))
                for channel, first_seq, texts in batches
            ]
        )

    def _start_sender(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[tuple[str, dict[str, Any]]]
    ) -> None:
        task = loop.create_task(self._sender(loop, queue))
        self._senders.add(task)
        task.add_done_callback(self._senders.discard)

    async def _sender(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[tuple[str, dict[str, Any]]]
    ) -> None:
        while True:
            batch = [await queue.get()]
            # A backlog (many runs publishing in one process) goes out merged: a group's
            # consecutive events travel as one layer message, so a busy process sends, and
            # each server receives, a message per group per round instead of one per event.
            while not queue.empty() and len(batch) < MAX_BACKLOG_BATCH:
                batch.append(queue.get_nowait())
            merged = merge_backlog(batch)
            if self._pipelined is not None:
                await self._send_pipelined(loop, merged)
                continue
            chains: dict[str, list[tuple[dict[str, Any], int]]] = {}
            for group, message, count in merged:
                chains.setdefault(group, []).append((message, count))
            # Groups go out side by side, each group's messages in order: one after another,
            # a round on hundreds of channels waited a layer round trip per channel, and the
            # last channel's watchers waited for all of them.
            pending = collections.deque(chains.items())
            senders = min(SEND_CONCURRENCY, len(pending))
            if senders == 1:
                await self._send_chains(loop, pending)
            else:
                await asyncio.gather(*(self._send_chains(loop, pending) for _ in range(senders)))

    async def _send_pipelined(
        self, loop: asyncio.AbstractEventLoop, merged: list[tuple[str, dict[str, Any], int]]
    ) -> None:
        assert self._pipelined is not None
        try:
            await self._pipelined([(group, message) for group, message, _ in merged])
        except Exception:
            logger.exception(
                "agent_channels: live send to %d groups failed; the log has it", len(merged)
            )
        finally:
            self._done(loop, sum(count for _, _, count in merged))

    async def _send_chains(
        self,
        loop: asyncio.AbstractEventLoop,
        pending: collections.deque[tuple[str, list[tuple[dict[str, Any], int]]]],
    ) -> None:
        assert self.layer is not None
        while pending:
            group, chain = pending.popleft()
            for message, count in chain:
                try:
                    await self.layer.group_send(group, message)
                except Exception:
                    logger.exception(
                        "agent_channels: live send to %s failed; the log has it", group
                    )
                finally:
                    self._done(loop, count)

    def _done(self, loop: asyncio.AbstractEventLoop, count: int = 1) -> None:
        with self._lock:
            self._pending[loop] = self._pending.get(loop, count) - count
            self._idle.notify_all()

    def _waitable(self) -> int:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        # A loop's own thread cannot wait for that loop; a closed loop will send nothing.
        return sum(
            count
            for loop, count in self._pending.items()
            if loop is not running and not loop.is_closed()
        )

    def drain(self, timeout: float = 5.0) -> bool:
        """Block until every accepted send was handed to the layer; False on timeout.

        Call it before a short-lived process (a script, a management command) exits;
        long-lived workers need not. Also runs automatically at interpreter exit.
        """
        with self._lock:
            return self._idle.wait_for(lambda: self._waitable() == 0, timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued, then stop this wire's senders (on reset and at exit)."""
        if not self.drain(timeout):
            logger.warning("agent_channels: live sends still queued at shutdown were dropped")
        for task in list(self._senders):
            loop = task.get_loop()
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(task.cancel)


#: Queued sends one round of the sender takes at most (and merges per group).
MAX_BACKLOG_BATCH = 500

#: Groups a round sends to at once (each may hold a layer connection meanwhile).
SEND_CONCURRENCY = 16


def _put_all(
    queue: asyncio.Queue[tuple[str, dict[str, Any]]], items: list[tuple[str, dict[str, Any]]]
) -> None:
    for item in items:
        queue.put_nowait(item)


def merge_backlog(
    batch: list[tuple[str, dict[str, Any]]],
) -> list[tuple[str, dict[str, Any], int]]:
    """``(group, message, how many merged)`` for a backlog, each group's order kept.

    Consecutive event messages of one group join when their seqs follow on and the
    frames together stay within ``MAX_WIRE_FRAME_BYTES``; anything else goes as it came.
    """
    limit = get_config()["MAX_WIRE_FRAME_BYTES"]
    out: list[tuple[str, dict[str, Any], int]] = []
    open_by_group: dict[str, int] = {}  # group -> index in out of its last message
    for group, message in batch:
        index = open_by_group.get(group)
        if index is not None:
            _, last, count = out[index]
            if (
                message.get("type") == EVENTS_MESSAGE == last.get("type")
                and message.get("texts") is not None
                and last.get("texts") is not None
                and message["first"] == last["last"] + 1
                and sum(map(len, last["texts"])) + sum(map(len, message["texts"])) <= limit
            ):
                out[index] = (
                    group,
                    {**last, "last": message["last"], "texts": last["texts"] + message["texts"]},
                    count + 1,
                )
                continue
        open_by_group[group] = len(out)
        out.append((group, message, 1))
    return out


_wire: PerProcess[LiveWire] = PerProcess(
    lambda: LiveWire(get_config()["CHANNEL_LAYER"]), close=LiveWire.close
)


def get_wire() -> LiveWire:
    """The process's wire (a new one after a fork: threads and loops do not survive it)."""
    return _wire.get()


def reset_wire() -> None:
    _wire.reset()


def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("AGENT_CHANNELS", "CHANNEL_LAYERS"):
        reset_wire()


setting_changed.connect(_reset_on_setting_changed)

# Run before the interpreter starts shutting down thread pools: the layer's connection
# setup (DNS lookups) uses the default executor, which refuses work after that point.
_register_exit = getattr(threading, "_register_atexit", atexit.register)
_register_exit(reset_wire)
