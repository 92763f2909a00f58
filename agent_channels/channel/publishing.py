"""The publishing API: single events, and coalesced token streams.

``publish`` persists an event and sends it live after the commit. ``MessageStream``
turns a high-rate token stream into one ``message.delta`` event per window: the first
delta after a quiet window goes out at once, the rest of a burst waits at most one
window. The concatenation of a message's deltas always equals its final text.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import threading
import time
import uuid
import weakref
from types import TracebackType
from typing import Any

from channels.db import database_sync_to_async
from django.db import connection, connections

from agent_channels.channel.log import EventDraft, append, append_many
from agent_channels.conf import get_config
from agent_channels.models import Event
from agent_channels.per_process import PerProcess

__all__ = ["AsyncMessageStream", "MessageStream", "apublish", "publish", "stream_message"]

logger = logging.getLogger(__name__)

_open_streams: dict[str, weakref.WeakSet[MessageStream]] = {}
_open_streams_lock = threading.Lock()


def _flush_open_streams(channel: str) -> None:
    """Flush this process's pending deltas on ``channel`` so they keep their place in order."""
    with _open_streams_lock:
        streams = list(_open_streams.get(channel, ()))
    for stream in streams:
        stream.flush()


def publish(
    channel: str,
    event: str,
    data: dict[str, Any] | None = None,
    *,
    run: Any = None,
    owner: Any = None,
) -> Event:
    """Persist one event on ``channel`` and send it live once the transaction commits.

    ``run`` is a :class:`~agent_channels.models.Run` or its id; ``owner`` (a user or
    user id) owns the channel if this call creates it. Returns the saved event.
    """
    _flush_open_streams(channel)
    draft = EventDraft(event, {} if data is None else data, _pk(run))
    return append(channel, [draft], owner_id=_pk(owner))[0]


async def apublish(
    channel: str,
    event: str,
    data: dict[str, Any] | None = None,
    *,
    run: Any = None,
    owner: Any = None,
) -> Event:
    """:func:`publish` for async code."""
    saved: Event = await database_sync_to_async(publish)(channel, event, data, run=run, owner=owner)
    return saved


def _pk(obj: Any) -> Any:
    return getattr(obj, "pk", obj)


class _Flusher:
    """One daemon thread per process that flushes streams whose window has passed.

    It keeps its database connection while streams are busy (a new connection per
    timed flush costs more than the flush) and closes it after ``IDLE_SECONDS``
    without work, or when :func:`release_connections` asks.
    """

    IDLE_SECONDS = 2.0

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, weakref.ref[MessageStream]]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._release_requested = False
        self._released = threading.Event()
        threading.Thread(target=self._run, name="agent-channels-flusher", daemon=True).start()

    def schedule(self, deadline: float, stream: MessageStream) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._counter), weakref.ref(stream)))
            self._cond.notify()

    def release(self, timeout: float) -> bool:
        with self._cond:
            self._released.clear()
            self._release_requested = True
            self._cond.notify()
        return self._released.wait(timeout)

    def _next(self) -> tuple[list[MessageStream], float] | bool:
        """The streams now due and when the first was due; False when idle or asked to
        release connections."""
        with self._cond:
            while True:
                if self._release_requested:
                    self._release_requested = False
                    return False
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    first = self._heap[0][0]
                    due: dict[int, MessageStream] = {}
                    while self._heap and self._heap[0][0] <= now:
                        stream = heapq.heappop(self._heap)[2]()
                        if stream is not None:
                            due[id(stream)] = stream
                    return list(due.values()), first
                if self._heap:
                    self._cond.wait(self._heap[0][0] - now)
                elif not self._cond.wait(self.IDLE_SECONDS) and not self._heap:
                    return False

    def _run(self) -> None:
        while True:
            work = self._next()
            if isinstance(work, bool):
                connections.close_all()  # this thread's connections only
                self._released.set()
                continue
            streams, due_at = work
            if not streams:
                continue
            started = time.monotonic()
            try:
                # No close_old_connections() here: with CONN_MAX_AGE=0 it would reconnect
                # for every flush; the connection is closed when idle or broken instead.
                if len(streams) == 1:
                    streams[0].flush_due()
                else:
                    _flush_batch(streams)
            except Exception:
                # The deltas stay buffered; the next write or complete() retries them.
                logger.exception(
                    "agent_channels: timed flush of %s failed",
                    ", ".join(stream.message_id for stream in streams),
                )
                connections.close_all()
                continue
            slot = _load.slot(min(stream.window for stream in streams))
            if slot > 0 and _load.busy(started):
                _load.batch_done(slot, started - due_at, time.monotonic() - started)


#: A process that flushed this many streams within two batch slots is busy: a stream's next
#: delta then joins the batched flush at the end of the current slot (at most one window
#: long, ``BATCH_SLOT`` at first), one transaction for all of the process's streams,
#: instead of committing on its own. A quiet process publishes at once.
BATCH_MIN_STREAMS = 8
BATCH_SLOT = 0.05

#: A batched flush that starts late or takes long, together more than this share of its
#: slot, doubles the slot (up to ``COALESCE_MAX_WINDOW_MS``): the process cannot keep up
#: with one event per stream per slot, so each event carries more tokens instead of the
#: backlog growing. ``CALM_BATCHES`` flushes in a row under ``CALM_SHARE`` halve it again.
STRAINED_SHARE = 0.5
CALM_SHARE = 0.15
CALM_BATCHES = 10


class _Load:
    """How busy this process's publishing is: when its last ``BATCH_MIN_STREAMS`` flushes
    happened, and how far its batched slot is stretched."""

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque(maxlen=BATCH_MIN_STREAMS)
        self._lock = threading.Lock()
        #: The slot is ``stretch`` times the base slot (a power of two).
        self.stretch = 1
        self._calm = 0

    def note(self, now: float, count: int = 1) -> None:
        with self._lock:
            self._times.extend([now] * min(count, BATCH_MIN_STREAMS))

    def busy(self, now: float) -> bool:
        # The horizon spans two slots, so a process flushing in batches stays busy between them.
        horizon = 2 * BATCH_SLOT * self.stretch
        with self._lock:
            if len(self._times) == BATCH_MIN_STREAMS and self._times[0] >= now - horizon:
                return True
            # Quiet again: the next burst starts from the narrowest slot.
            self.stretch, self._calm = 1, 0
            return False

    def slot(self, window: float) -> float:
        """The batched slot for a stream with ``window``: the base slot, stretched under load."""
        base = min(window, BATCH_SLOT)
        widest = max(base, float(get_config()["COALESCE_MAX_WINDOW_MS"] or 0) / 1000.0)
        return min(base * self.stretch, widest)

    def batch_done(self, slot: float, late: float, took: float) -> None:
        """A batched flush due at the end of a ``slot`` started ``late`` and took ``took``."""
        share = (max(late, 0.0) + took) / slot
        with self._lock:
            if share > STRAINED_SHARE:
                self._calm = 0
                widest = float(get_config()["COALESCE_MAX_WINDOW_MS"] or 0) / 1000.0
                if slot < widest - 1e-9:
                    self.stretch *= 2
            elif share < CALM_SHARE and self.stretch > 1:
                self._calm += 1
                if self._calm >= CALM_BATCHES:
                    self._calm = 0
                    self.stretch //= 2
            else:
                self._calm = 0


_load = _Load()


def _batch_deadline(now: float, window: float) -> float:
    """The end of the current slot on a grid every stream of the process shares, so the
    streams deferred within one slot are flushed together."""
    slot = _load.slot(window)
    return math.ceil(now / slot) * slot


def _flush_batch(streams: list[MessageStream]) -> None:
    """Flush the pending deltas of ``streams`` in one transaction (:func:`append_many`).

    Each stream's lock is held until its deltas are committed, so none of them can
    commit later deltas first; locks are taken in one order (the flusher is the only
    thread that holds more than one).
    """
    held: list[MessageStream] = []
    try:
        for stream in sorted(streams, key=id):
            stream._lock.acquire()
            held.append(stream)
            stream._timer_armed = False
        pending = [stream for stream in held if stream._pending]
        if not pending:
            return
        now = time.monotonic()
        try:
            append_many(
                [(stream.channel, [stream._delta_draft()]) for stream in pending], returning=False
            )
        except ValueError:
            # A stream on a channel that does not exist yet: one append each creates it.
            for stream in pending:
                stream._flush_locked(now)
            return
        for stream in pending:
            stream._pending.clear()
            stream._next_flush_at = now + stream.window
        _load.note(now, len(pending))
    finally:
        for stream in held:
            stream._lock.release()


_flusher: PerProcess[_Flusher] = PerProcess(_Flusher)


def release_connections(timeout: float = 5.0) -> bool:
    """Close the flusher thread's database connection now (worker shutdown, tests)."""
    flusher = _flusher.peek()
    return True if flusher is None else flusher.release(timeout)


def _get_flusher() -> _Flusher:
    return _flusher.get()


class MessageStream:
    """A model message being generated, published as coalesced ``message.delta`` events.

    Use it as a context manager: a clean exit publishes ``message.completed`` with the
    full text, an exception publishes ``message.aborted`` with the text so far.

    Inside ``transaction.atomic`` no timed flush happens (a flush from another thread
    would wait on the transaction's locks); deltas then go out with the next write
    after the window, or on completion.
    """

    def __init__(
        self,
        channel: str,
        *,
        run: Any = None,
        message_id: str | None = None,
        window_ms: float | None = None,
    ) -> None:
        self.channel = channel
        self.run_id = _pk(run)
        self.message_id = message_id or uuid.uuid4().hex
        window = get_config()["COALESCE_WINDOW_MS"] if window_ms is None else window_ms
        self.window = float(window) / 1000.0
        self._pending: list[str] = []
        self._text: list[str] = []
        self._lock = threading.RLock()
        self._next_flush_at = 0.0
        self._timer_armed = False
        self.closed = False
        with _open_streams_lock:
            _open_streams.setdefault(channel, weakref.WeakSet()).add(self)

    @property
    def text(self) -> str:
        """Everything written so far."""
        return "".join(self._text)

    def write(self, delta: str) -> None:
        """Add a piece of text; it is published now or within one window."""
        if not isinstance(delta, str):
            raise TypeError(f"A delta must be a str, not {type(delta).__name__}.")
        if not delta:
            return
        with self._lock:
            if self.closed:
                raise RuntimeError(f"Message {self.message_id} is already closed.")
            self._pending.append(delta)
            self._text.append(delta)
            now = time.monotonic()
            if now >= self._next_flush_at:
                if connection.in_atomic_block or self.window <= 0 or not _load.busy(now):
                    self._flush_locked(now)
                elif not self._timer_armed:
                    # Busy process: this delta joins the batched flush ending the window.
                    self._timer_armed = True
                    _get_flusher().schedule(_batch_deadline(now, self.window), self)
            elif not self._timer_armed and not connection.in_atomic_block:
                self._timer_armed = True
                _get_flusher().schedule(self._next_flush_at, self)

    def flush(self) -> None:
        """Publish pending deltas now."""
        with self._lock:
            self._flush_locked(time.monotonic())

    def flush_due(self) -> None:
        with self._lock:
            self._timer_armed = False
            self._flush_locked(time.monotonic())

    def _delta_draft(self) -> EventDraft:
        text = "".join(self._pending)
        return EventDraft(
            "message.delta", {"message_id": self.message_id, "text": text}, self.run_id
        )

    def _flush_locked(self, now: float) -> None:
        if not self._pending:
            return
        append(self.channel, [self._delta_draft()])
        self._pending.clear()
        self._next_flush_at = now + self.window
        _load.note(now)

    def complete(self, **extra: Any) -> Event:
        """Flush, then publish ``message.completed`` with the full text (and ``extra`` data)."""
        return self._close("message.completed", extra)

    def abort(self, reason: str = "", **extra: Any) -> Event:
        """Flush, then publish ``message.aborted``: the text so far is kept, marked unfinished."""
        return self._close("message.aborted", {"reason": reason, **extra})

    def _close(self, name: str, extra: dict[str, Any]) -> Event:
        with self._lock:
            if self.closed:
                raise RuntimeError(f"Message {self.message_id} is already closed.")
            self._flush_locked(time.monotonic())
            self.closed = True
            data = {"message_id": self.message_id, "text": self.text, **extra}
            event = append(self.channel, [EventDraft(name, data, self.run_id)])[0]
        with _open_streams_lock:
            streams = _open_streams.get(self.channel)
            if streams is not None:
                streams.discard(self)
                if not streams:
                    del _open_streams[self.channel]
        return event

    def __enter__(self) -> MessageStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.closed:
            return
        if exc_type is None:
            self.complete()
        else:
            self.abort(reason=exc_type.__name__)


def stream_message(
    channel: str, *, run: Any = None, message_id: str | None = None
) -> MessageStream:
    """Start a coalesced message on ``channel``; see :class:`MessageStream`."""
    return MessageStream(channel, run=run, message_id=message_id)


class AsyncMessageStream:
    """:class:`MessageStream` for async code: the same stream, driven from a thread."""

    def __init__(self, channel: str, *, run: Any = None, message_id: str | None = None) -> None:
        self._stream = MessageStream(channel, run=run, message_id=message_id)
        self.message_id = self._stream.message_id

    @property
    def text(self) -> str:
        """Everything written so far."""
        return self._stream.text

    async def write(self, delta: str) -> None:
        """Add a piece of text; see :meth:`MessageStream.write`."""
        await database_sync_to_async(self._stream.write)(delta)

    async def complete(self, **extra: Any) -> Event:
        """Publish ``message.completed``; see :meth:`MessageStream.complete`."""
        event: Event = await database_sync_to_async(self._stream.complete)(**extra)
        return event

    async def abort(self, reason: str = "", **extra: Any) -> Event:
        """Publish ``message.aborted``; see :meth:`MessageStream.abort`."""
        event: Event = await database_sync_to_async(self._stream.abort)(reason, **extra)
        return event
