"""Asking the log for channels' newest seqs: one query per tick for every socket asking.

A socket whose live events went quiet asks once whether the layer dropped the last of
them (``HEAD_CHECK_MS``). Asked one socket at a time, that is a query and a thread hop
per socket per burst; a server process carrying hundreds of sockets whose streams pause
together (an overloaded wire delivers in bursts) spends a good share of its CPU on
them. So the sockets of a process wait for the next tick and share one query.
"""

from __future__ import annotations

import asyncio
import weakref

from channels.db import database_sync_to_async

from agent_channels.models import Channel

__all__ = ["Head", "HeadChecks", "head_checks", "read_heads"]

#: ``(channel id or None, last seq, pruned seq)`` of a channel.
Head = tuple[int | None, int, int]

#: How long a check waits for others to share its query: a dropped tail arrives this much
#: later than it would alone, against ``HEAD_CHECK_MS`` (500 ms) of quiet before it.
TICK_SECONDS = 0.02
#: Names per query: a long ``IN`` list costs the database more than a second query.
CHUNK = 500

_NO_CHANNEL: Head = (None, 0, 0)


def read_heads(names: list[str]) -> dict[str, Head]:
    """The head of each named channel that exists."""
    heads: dict[str, Head] = {}
    for start in range(0, len(names), CHUNK):
        rows = Channel.objects.filter(name__in=names[start : start + CHUNK]).values_list(
            "name", "id", "last_seq", "pruned_seq"
        )
        for name, channel_id, last_seq, pruned_seq in rows:
            heads[name] = (channel_id, last_seq, pruned_seq)
    return heads


class HeadChecks:
    """The checks asked for on one event loop, answered together each tick."""

    def __init__(self) -> None:
        self._asked: dict[str, list[asyncio.Future[Head]]] = {}
        self._in_query: dict[str, list[asyncio.Future[Head]]] = {}
        self._answering: asyncio.Task[None] | None = None
        #: Queries made (for tests and benchmarks: how many checks shared each).
        self.queries = 0

    async def head(self, channel: str) -> Head:
        """The channel's head as of the next tick's query; raises what that query raised."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Head] = loop.create_future()
        self._asked.setdefault(channel, []).append(answer)
        if self._answering is None or self._answering.done():
            self._answering = loop.create_task(self._answer())
            self._answering.add_done_callback(self._answered)
        return await answer

    async def _answer(self) -> None:
        # Checks asked while a query runs wait for the next one: the loop goes on until
        # nobody is waiting (nothing can be asked between that test and the task ending).
        while self._asked:
            await asyncio.sleep(TICK_SECONDS)
            self._in_query, self._asked = self._asked, {}
            await self._answer_all(self._in_query)
            self._in_query = {}

    def _answered(self, task: asyncio.Task[None]) -> None:
        # Cancelled (the loop is closing), perhaps before it ever ran, or failed: nobody
        # may be left waiting for an answer that will not come. (Ended normally, it left
        # nobody waiting, and checks asked since are a newer task's.)
        if self._answering is task:
            # A finished task keeps its loop alive, and _by_loop is keyed weakly by it.
            self._answering = None
        if not task.cancelled() and task.exception() is None:
            return
        for waiting in [*self._in_query.values(), *self._asked.values()]:
            for answer in waiting:
                if not answer.done():
                    answer.cancel()
        self._in_query = {}

    async def _answer_all(self, asked: dict[str, list[asyncio.Future[Head]]]) -> None:
        asked = {
            name: waiting
            for name, waiting in asked.items()
            if any(not answer.done() for answer in waiting)
        }
        if not asked:
            return
        self.queries += 1
        try:
            heads = await database_sync_to_async(read_heads)(sorted(asked))
        except Exception as exc:
            # Each asker decides what a failed read means to it (the pump retries).
            for waiting in asked.values():
                for answer in waiting:
                    if not answer.done():
                        answer.set_exception(exc)
            return
        for name, waiting in asked.items():
            head = heads.get(name, _NO_CHANNEL)
            for answer in waiting:
                if not answer.done():
                    answer.set_result(head)


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HeadChecks] = (
    weakref.WeakKeyDictionary()
)


def head_checks() -> HeadChecks:
    """The running loop's :class:`HeadChecks` (a server process has one loop)."""
    loop = asyncio.get_running_loop()
    checks = _by_loop.get(loop)
    if checks is None:
        checks = _by_loop[loop] = HeadChecks()
    return checks
