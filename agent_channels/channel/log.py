"""Appending to the log: seq assignment, persistence, and hand-off to the live wire.

A seq is reserved by incrementing ``Channel.last_seq`` in the same transaction that
inserts the events. The row update serialises writers on the channel (a row lock on
PostgreSQL, the database write lock on SQLite), so seqs are contiguous, never reused,
and commit in seq order; the live wire is told only after the commit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.db import connections, router, transaction
from django.db.models import F, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from agent_channels.channel.connections import release, retrying
from agent_channels.channel.names import validate_name
from agent_channels.channel.wire import get_wire
from agent_channels.models import Channel, Event

__all__ = ["EventDraft", "InvalidEvent", "append", "check_storable", "read", "read_frames"]

MAX_EVENT_NAME_LENGTH = 100


class InvalidEvent(ValueError):
    """An event cannot be published as given; ``str(exc)`` says why."""


@dataclass(frozen=True)
class EventDraft:
    """An event before it has a seq."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    run_id: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= MAX_EVENT_NAME_LENGTH:
            raise InvalidEvent(
                f"An event name must be a string of 1 to {MAX_EVENT_NAME_LENGTH} characters."
            )
        if not isinstance(self.data, dict):
            raise InvalidEvent(f"Event data must be a dict, not {type(self.data).__name__}.")
        # Kept: the same text is the row's JSON and the live frame's data (one encoding
        # per event instead of three; the data must not be changed after this point).
        object.__setattr__(self, "_json", _encode_storable(self.data))

    @property
    def data_json(self) -> str:
        """The data as the JSON text that is stored and sent."""
        text: str = self.__dict__["_json"]
        return text


# A JSON-escaped NUL that is not itself an escaped backslash followed by "u0000".
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def check_storable(data: Any) -> None:
    """Refuse what no backend stores the same way, before anything is written.

    NaN and infinities are not JSON; PostgreSQL's jsonb refuses NUL characters and
    unpaired surrogates. One C-speed encoding pass finds all of them.
    """
    _encode_storable(data)


def _encode_storable(data: Any) -> str:
    """``data`` as compact JSON text, or :class:`InvalidEvent` (see :func:`check_storable`)."""
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        text.encode("utf-8")
    except ValueError as exc:  # NaN/Infinity, and UnicodeEncodeError for lone surrogates
        raise InvalidEvent(f"Event data cannot be stored as JSON: {exc}.") from None
    except TypeError as exc:
        raise InvalidEvent(f"Event data must be JSON-serializable: {exc}.") from None
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise InvalidEvent("Event data may not contain NUL characters.")
    return text


def _reserve(name: str, count: int, owner_id: Any, using: str) -> tuple[int, int]:
    """Add ``count`` to the channel's last_seq, creating the channel if needed.

    Returns ``(channel_id, new_last_seq)``. The UPDATE comes first so that on SQLite
    the transaction takes the write lock at once instead of upgrading from a read.
    """
    connection = connections[using]
    table = connection.ops.quote_name(Channel._meta.db_table)
    now = timezone.now()
    # Raw SQL gets the value as the backend stores it (no deprecated sqlite3 adapters).
    now_param = connection.ops.adapt_datetimefield_value(now)
    returning = connection.vendor in ("postgresql", "sqlite")
    for _attempt in range(2):
        with connection.cursor() as cursor:
            if returning:
                cursor.execute(
                    f"UPDATE {table} SET last_seq = last_seq + %s, last_event_at = %s "  # noqa: S608
                    "WHERE name = %s RETURNING id, last_seq",
                    [count, now_param, name],
                )
                row = cursor.fetchone()
            else:
                updated = (
                    Channel.objects.using(using)
                    .filter(name=name)
                    .update(last_seq=F("last_seq") + count, last_event_at=now)
                )
                row = (
                    Channel.objects.using(using)
                    .filter(name=name)
                    .values_list("id", "last_seq")
                    .get()
                    if updated
                    else None
                )
        if row is not None:
            return int(row[0]), int(row[1])
        Channel.objects.using(using).bulk_create(
            [Channel(name=name, owner_id=owner_id)], ignore_conflicts=True
        )
    raise RuntimeError(f"Channel {name!r} could not be created.")  # pragma: no cover


def append(
    channel: str,
    drafts: Sequence[EventDraft],
    *,
    owner_id: Any = None,
    notify: bool = True,
) -> list[Event]:
    """Persist ``drafts`` as the next events of ``channel`` and return them with their seqs.

    ``owner_id`` becomes the owner of a channel this call creates. After the
    surrounding transaction commits, the events go out on the live wire.
    """
    validate_name(channel)
    if not drafts:
        return []
    using = router.db_for_write(Event)
    # The events' created_at doubles as the write's identity: after a lost connection the
    # retry first looks for it, so a write that committed before the break is not repeated.
    now = timezone.now()
    attempts = 0

    def write() -> list[Event]:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            done = _already_appended(channel, drafts, now, using)
            if done is not None:
                return done
        if connections[using].vendor == "postgresql":
            return _append_postgresql(channel, drafts, owner_id, using, now)
        with transaction.atomic(using=using):
            channel_id, last_seq = _reserve(channel, len(drafts), owner_id, using)
            first_seq = last_seq - len(drafts) + 1
            events = [
                Event(
                    channel_id=channel_id,
                    seq=first_seq + i,
                    name=draft.name,
                    run_id=draft.run_id,
                    data=draft.data,
                    created_at=now,
                )
                for i, draft in enumerate(drafts)
            ]
            Event.objects.using(using).bulk_create(events)
        return events

    events = retrying(write, using=using)
    if notify:
        texts = frame_texts(events, drafts)
        transaction.on_commit(
            partial(get_wire().send_events, channel, events[0].seq, texts), using=using
        )
    # A run's thread writes, then waits on its model: it need not hold a connection meanwhile.
    release(using)
    return events


def frame_texts(events: Sequence[Event], drafts: Sequence[EventDraft]) -> list[str]:
    """The wire frames of just-appended ``events`` (``to_frame()`` as JSON text), built
    around each draft's encoded data instead of encoding the data again."""
    if not events:
        return []
    ts = events[0].created_at.isoformat()  # one write: one timestamp for all its events
    names: dict[str, str] = {}
    runs: dict[Any, str] = {}
    texts = []
    for event, draft in zip(events, drafts, strict=True):
        name_json = names.get(event.name)
        if name_json is None:
            name_json = names[event.name] = json.dumps(event.name)
        run_json = runs.get(event.run_id)
        if run_json is None:
            run_json = runs[event.run_id] = json.dumps(str(event.run_id) if event.run_id else None)
        texts.append(
            f'{{"type":"event","seq":{event.seq},"event":{name_json},"run":{run_json},'
            f'"data":{draft.data_json},"ts":"{ts}"}}'
        )
    return texts


def _already_appended(
    channel: str, drafts: Sequence[EventDraft], now: Any, using: str
) -> list[Event] | None:
    """The events of an earlier attempt of this write, if it committed."""
    found = list(
        Event.objects.using(using).filter(channel__name=channel, created_at=now).order_by("seq")
    )
    same = len(found) == len(drafts) and all(
        event.name == draft.name
        and str(event.run_id or "") == str(draft.run_id or "")
        and event.data == json.loads(json.dumps(draft.data))
        for event, draft in zip(found, drafts, strict=False)
    )
    return found if same else None


def _append_postgresql(
    channel: str, drafts: Sequence[EventDraft], owner_id: Any, using: str, now: Any
) -> list[Event]:
    """Reserve the seqs and insert the events in one statement.

    Outside a transaction that statement is its own transaction: one round trip and
    one commit instead of BEGIN, UPDATE, INSERT, COMMIT (publish() ran at about half
    the speed of a plain insert before). The UPDATE's row lock still orders writers.
    """
    connection = connections[using]
    quote = connection.ops.quote_name
    channel_table, event_table = quote(Channel._meta.db_table), quote(Event._meta.db_table)
    count = len(drafts)
    rows = ", ".join(["(%s, %s, %s::uuid, %s::jsonb)"] * count)
    sql = (
        f"WITH c AS (UPDATE {channel_table} SET last_seq = last_seq + %s, last_event_at = %s "  # noqa: S608
        "WHERE name = %s RETURNING id, last_seq), "
        f"ins AS (INSERT INTO {event_table} (channel_id, seq, name, run_id, data, created_at) "
        "SELECT c.id, c.last_seq - %s + v.ord, v.name, v.run_id, v.data, %s "
        f"FROM c, (VALUES {rows}) AS v(ord, name, run_id, data) RETURNING id, seq, channel_id) "
        "SELECT id, seq, channel_id FROM ins ORDER BY seq"
    )
    params: list[Any] = [count, now, channel, count, now]
    for ordinal, draft in enumerate(drafts, start=1):
        run_id = None if draft.run_id is None else str(draft.run_id)
        params += [ordinal, draft.name, run_id, draft.data_json]
    for _attempt in range(2):
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            inserted = cursor.fetchall()
        if inserted:
            return [
                Event(
                    id=event_id,
                    channel_id=channel_id,
                    seq=seq,
                    name=draft.name,
                    run_id=draft.run_id,
                    data=draft.data,
                    created_at=now,
                )
                for (event_id, seq, channel_id), draft in zip(inserted, drafts, strict=True)
            ]
        Channel.objects.using(using).bulk_create(
            [Channel(name=channel, owner_id=owner_id)], ignore_conflicts=True
        )
    raise RuntimeError(f"Channel {channel!r} could not be created.")  # pragma: no cover


def read(channel_id: int, after: int, until: int | None = None, limit: int = 500) -> list[Event]:
    """Events of a channel with ``after < seq <= until``, oldest first, at most ``limit``."""
    qs = Event.objects.filter(channel_id=channel_id, seq__gt=after)
    if until is not None:
        qs = qs.filter(seq__lte=until)
    return list(qs.order_by("seq")[:limit])


def read_frames(
    channel_id: int, after: int, until: int | None = None, limit: int = 500
) -> list[tuple[int, str]]:
    """``(seq, frame text)`` of the events :func:`read` would return, for replay.

    The same frames as ``json.dumps(event.to_frame())`` (whitespace aside), built without
    decoding and re-encoding each event's data: the database hands the stored JSON over as
    text and the frame is put together around it. Catch-up is dominated by that decoding
    otherwise.
    """
    qs = Event.objects.filter(channel_id=channel_id, seq__gt=after)
    if until is not None:
        qs = qs.filter(seq__lte=until)
    rows = (
        qs.order_by("seq")
        .annotate(data_text=Cast("data", output_field=TextField()))
        .values_list("seq", "name", "run_id", "data_text", "created_at")[:limit]
    )
    names: dict[str, str] = {}
    runs: dict[Any, str] = {None: "null"}
    frames = []
    for seq, name, run_id, data_text, created_at in rows:
        name_json = names.get(name)
        if name_json is None:
            name_json = names[name] = json.dumps(name)
        run_json = runs.get(run_id)
        if run_json is None:
            run_json = runs[run_id] = f'"{run_id}"'
        frames.append(
            (
                seq,
                f'{{"type":"event","seq":{seq},"event":{name_json},"run":{run_json},'
                f'"data":{data_text},"ts":"{created_at.isoformat()}"}}',
            )
        )
    return frames
