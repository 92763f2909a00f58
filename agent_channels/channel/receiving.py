"""Receiving from the channel layer in a way that a cancellation always ends.

A ``receive()`` on channels-redis loops on a blocking ``BZPOPMIN`` that the server ends
every ``brpop_timeout`` seconds, and redis-py reads each reply under a timer of the same
length. A cancellation that lands as that timer fires can be taken for the timer's own
(redis-py then returns "no message" and channels-redis blocks again): the task stays
"cancelling" forever. Whoever waits for it never finishes — channels' consumer waits for
its receive task when the socket closes, and an event loop shutting down waits for every
task — so each such socket kept a consumer, a Redis connection and a ``BZPOPMIN`` every
5 s alive in the server process for good (about 1 in 100 closes in the test suite).

:func:`receive` runs the layer's receive in a task of its own and, when cancelled, cancels
that task again until it ends (bounded), then lets the cancellation through.
:func:`dispatch_many` is channels' ``await_many_dispatch`` with the same care, and with a
long-lived reader per source instead of a task per message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["dispatch_many", "receive"]

logger = logging.getLogger(__name__)

#: How often a receive that survived a cancellation is cancelled again, and how long each
#: try waits: past the 5 s read timer of channels-redis, so that a retry does not land on
#: the next timer's edge as the first did.
CANCEL_TRIES = 8
CANCEL_WAIT_SECONDS = 1.0


async def receive(layer: Any, channel: str, timeout: float | None = None) -> dict[str, Any] | None:
    """``layer.receive(channel)``; None after ``timeout`` seconds, if one is given."""
    task = asyncio.ensure_future(layer.receive(channel))
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        await _stop(task)
        raise
    if not done:
        await _stop(task)
        return None
    message: dict[str, Any] = task.result()
    return message


async def _stop(task: asyncio.Future[Any]) -> None:
    cancelled_meanwhile = False
    for _ in range(CANCEL_TRIES):
        task.cancel()
        try:
            done, _ = await asyncio.wait({task}, timeout=CANCEL_WAIT_SECONDS)
        except asyncio.CancelledError:
            # Cancelled again while stopping (a loop shutting down): finish stopping first.
            cancelled_meanwhile = True
            continue
        if done:
            if not task.cancelled():
                task.exception()  # retrieved: a message or an error no one waits for now
            break
    else:
        logger.warning(
            "agent_channels: a channel layer receive ignored %d cancellations", CANCEL_TRIES
        )
    if cancelled_meanwhile:
        raise asyncio.CancelledError


async def dispatch_many(
    sources: Sequence[Callable[[], Awaitable[Any]]],
    dispatch: Callable[[Any], Awaitable[None]],
) -> None:
    """channels' ``await_many_dispatch``: ``dispatch`` every message of every source, one
    at a time, until ``dispatch`` raises or this is cancelled.

    One long-lived task reads each source into a one-slot inbox, instead of a new task
    and an ``asyncio.wait`` per message (a busy socket's layer messages paid ~25 µs each
    for that). A reader holds at most one message while the last is dispatched, so a
    slow consumer leaves the rest in the layer (whose capacity still applies). Readers
    are stopped like :func:`receive` stops a layer receive: cancelled again until they
    end.
    """
    inbox: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue(maxsize=1)
    stopping = False

    async def read(source: Callable[[], Awaitable[Any]]) -> None:
        try:
            while True:
                message = await source()
                await inbox.put((message, None))
        except asyncio.CancelledError as exc:
            if stopping:
                raise
            error: BaseException = exc  # a source cancelled from inside: end as it would
        except Exception as exc:
            error = exc
        await inbox.put((None, error))

    readers = [asyncio.ensure_future(read(source)) for source in sources]
    try:
        while True:
            message, error = await inbox.get()
            if error is not None:
                raise error
            await dispatch(message)
    finally:
        stopping = True
        cancelled = False
        for reader in readers:
            try:
                await _stop(reader)
            except asyncio.CancelledError:
                cancelled = True  # stop the others first; the cancellation goes on after
        if cancelled:
            raise asyncio.CancelledError
