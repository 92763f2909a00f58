"""The pump: sends one connection every seq after ``sent`` exactly once, in order.

The layer handler only records what exists (``known_last``) and keeps a bounded
cache of live frames; the pump sends from the cache when it has the frame and from
the log when it does not. Replay, the switch to live, gaps left by a layer that
dropped messages, frames too large for the wire, and a client too slow to keep up
are all the same case: the pump reads the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from channels.db import database_sync_to_async

from agent_channels.channel.connections import TRANSIENT_ERRORS
from agent_channels.channel.log import read_frames
from agent_channels.channel.oversize import fit_frame
from agent_channels.models import Channel
from agent_channels.ws.backpressure import pending_bytes
from agent_channels.ws.heads import Head, head_checks

__all__ = ["Head", "HistoryPruned", "Pump", "read_head"]

logger = logging.getLogger(__name__)

_BACKLOG_POLL_SECONDS = 0.05
#: A batched replay message (``?batch=1``) holds events up to about this many bytes.
BATCH_BYTES = 64 * 1024

T = TypeVar("T")


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def _read_head_sync(channel: str) -> Head:
    row = Channel.objects.filter(name=channel).values_list("id", "last_seq", "pruned_seq").first()
    return row if row is not None else (None, 0, 0)


async def read_head(channel: str) -> Head:
    head: Head = await database_sync_to_async(_read_head_sync)(channel)
    return head


class HistoryPruned(Exception):
    """The events the client needs next were pruned while it was behind."""

    def __init__(self, pruned_seq: int) -> None:
        super().__init__(pruned_seq)
        self.pruned_seq = pruned_seq


class Pump:
    """The sending half of one connection."""

    def __init__(
        self,
        channel: str,
        channel_id: int | None,
        sent: int,
        known_last: int,
        config: dict[str, Any],
        send: Callable[[str], Awaitable[None]],
        transport: Any,
        batch: bool = False,
    ) -> None:
        self.channel = channel
        self.channel_id = channel_id
        self.sent = sent
        self.known_last = known_last
        self.config = config
        self._send = send
        self._transport = transport
        #: The client asked for replay as ``{"type": "events", "events": [...]}`` messages.
        self.batch = batch
        self.cache: dict[int, str] = {}
        self.wake = asyncio.Event()
        self.wake.set()
        self.behind = False
        self.check_head = False

    def announce(self, first: int, last: int, texts: list[str] | None) -> None:
        """The layer said events ``first..last`` exist (with their frames, when they fit)."""
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

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a thread; a lost database connection is retried, not fatal.

        For ``DB_RETRY_SECONDS``: the socket stays open through a database blip and carries
        on where it was, instead of closing and being refused on reconnect meanwhile.
        """
        return await self._retrying(lambda: database_sync_to_async(fn)(*args))

    async def _retrying(self, read: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + float(self.config["DB_RETRY_SECONDS"])
        delay = 0.1
        while True:
            try:
                return await read()
            except TRANSIENT_ERRORS:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("agent_channels: reading %r failed; retrying", self.channel)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _shared_head_check(self) -> Head:
        return await head_checks().head(self.channel)

    def backlogged(self) -> bool:
        pending = pending_bytes(self._transport)
        return pending is not None and pending > self.config["SEND_BUFFER_BYTES"]

    async def run(self) -> None:
        """Send until cancelled; raises :class:`HistoryPruned` when it cannot go on."""
        while True:
            await self._wait_for_work()
            while self.sent < self.known_last:
                if self.backlogged():
                    self._fall_behind()
                    await asyncio.sleep(_BACKLOG_POLL_SECONDS)
                    continue
                self.behind = False
                text = self.cache.pop(self.sent + 1, None)
                if text is not None:
                    await self._send_event(text)
                    self.sent += 1
                    continue
                await self._send_from_log()

    def _fall_behind(self) -> None:
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
                _, head, _ = await self._retrying(self._shared_head_check)
                if head > self.known_last:
                    self.known_last = head
                    self.wake.set()
        self.wake.clear()

    async def _send_event(self, text: str) -> None:
        # Over the limit, a placeholder pointing to the HTTP endpoint: a frame the client
        # refuses would close the socket, and the client would resume at the same seq again.
        await self._send(fit_frame(self.channel, text, self.config["MAX_SENT_FRAME_BYTES"]))

    async def _send_from_log(self) -> None:
        if self.channel_id is None:
            self.channel_id, _, _ = await self._db(_read_head_sync, self.channel)
        assert self.channel_id is not None
        frames = await self._db(
            read_frames,
            self.channel_id,
            self.sent,
            self.known_last,
            self.config["REPLAY_BATCH_SIZE"],
        )
        if not frames or frames[0][0] != self.sent + 1:
            _, _, pruned_seq = await self._db(_read_head_sync, self.channel)
            raise HistoryPruned(pruned_seq)
        limit = self.config["MAX_SENT_FRAME_BYTES"]
        frames = [(seq, fit_frame(self.channel, text, limit)) for seq, text in frames]
        if self.batch:
            await self._send_batches(frames)
        else:
            send = self._send
            for seq, text in frames:
                await send(text)
                self.sent = seq
                if self.backlogged():
                    break  # the pump waits for the client before reading further
        if self.cache:
            for seq in [s for s in self.cache if s <= self.sent]:
                del self.cache[seq]

    async def _send_batches(self, frames: list[tuple[int, str]]) -> None:
        # One WebSocket message per ~BATCH_BYTES of events: framing and the client's
        # per-message work are paid once per batch instead of once per event.
        start, size = 0, 0
        for index, (_seq, text) in enumerate(frames):
            size += len(text) + 1
            last = index == len(frames) - 1
            if size < BATCH_BYTES and not last:
                continue
            chunk = frames[start : index + 1]
            await self._send('{"type":"events","events":[' + ",".join(t for _, t in chunk) + "]}")
            self.sent = chunk[-1][0]
            start, size = index + 1, 0
            if self.backlogged():
                return  # the pump waits for the client before reading further
