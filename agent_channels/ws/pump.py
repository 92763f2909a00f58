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
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async

from agent_channels.channel.log import read
from agent_channels.channel.oversize import fit_frame
from agent_channels.models import Channel
from agent_channels.ws.backpressure import pending_bytes

__all__ = ["Head", "HistoryPruned", "Pump", "read_head"]

logger = logging.getLogger(__name__)

_BACKLOG_POLL_SECONDS = 0.05

#: ``(channel id or None, last seq, pruned seq)`` of a channel.
Head = tuple[int | None, int, int]


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
    ) -> None:
        self.channel = channel
        self.channel_id = channel_id
        self.sent = sent
        self.known_last = known_last
        self.config = config
        self._send = send
        self._transport = transport
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
                _, head, _ = await read_head(self.channel)
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
            self.channel_id, _, _ = await read_head(self.channel)
        assert self.channel_id is not None
        events = await database_sync_to_async(read)(
            self.channel_id, self.sent, self.known_last, self.config["REPLAY_BATCH_SIZE"]
        )
        if not events or events[0].seq != self.sent + 1:
            _, _, pruned_seq = await read_head(self.channel)
            raise HistoryPruned(pruned_seq)
        for event in events:
            await self._send_event(dumps(event.to_frame()))
            self.sent = event.seq
            if self.backlogged():
                break  # the pump waits for the client before reading further
        for seq in [s for s in self.cache if s <= self.sent]:
            del self.cache[seq]
