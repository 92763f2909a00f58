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
from typing import Any, Literal, overload

from django.db import connections, router, transaction
from django.db.models import F, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from agent_channels.channel.connections import release, retrying
from agent_channels.channel.names import validate_name
from agent_channels.channel.wire import get_wire
from agent_channels.conf import get_config
from agent_channels.models import Channel, Event

__all__ = [
    "EventDraft",
    "InvalidEvent",
    "append",
    "append_many",
    "check_storable",
    "read",
    "read_frames",
]

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
        size = len(text.encode("utf-8"))
    except ValueError as exc:  # NaN/Infinity, and UnicodeEncodeError for lone surrogates
        raise InvalidEvent(f"Event data cannot be stored as JSON: {exc}.") from None
    except TypeError as exc:
        raise InvalidEvent(f"Event data must be JSON-serializable: {exc}.") from None
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise InvalidEvent("Event data may not contain NUL characters.")
    limit = get_config()["MAX_EVENT_BYTES"]
    if limit and size > limit:
        raise InvalidEvent(f"Event data may be at most {limit} bytes of JSON (MAX_EVENT_BYTES).")
    return text


InsertedRow = tuple[int, int, int]  # an inserted event's (id, seq, channel_id)


def _inserted_events(
    rows: Sequence[InsertedRow], drafts: Sequence[EventDraft], now: Any
) -> list[Event]:
    """Events from the ``(id, seq, channel_id)`` rows a RETURNING insert gave, in order."""
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
        for (event_id, seq, channel_id), draft in zip(rows, drafts, strict=True)
    ]


def _reserve_and_insert(
    name: str, drafts: Sequence[EventDraft], owner_id: Any, using: str, now: Any
) -> list[Event]:
    """The portable path (inside the caller's transaction): reserve seqs, insert the rows."""
    channel_id, last_seq = _reserve(name, len(drafts), owner_id, using)
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
    return Event.objects.using(using).bulk_create(events)


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
            return _reserve_and_insert(channel, drafts, owner_id, using, now)

    events = retrying(write, using=using)
    if notify:
        texts = frame_texts(events[0].seq, drafts, now)
        transaction.on_commit(
            partial(get_wire().send_events, channel, events[0].seq, texts), using=using
        )
    # A run's thread writes, then waits on its model: it need not hold a connection meanwhile.
    release(using)
    return events


@overload
def append_many(
    batches: Sequence[tuple[str, Sequence[EventDraft]]], *, returning: Literal[True] = ...
) -> list[list[Event]]: ...


@overload
def append_many(
    batches: Sequence[tuple[str, Sequence[EventDraft]]], *, returning: Literal[False]
) -> None: ...


def append_many(
    batches: Sequence[tuple[str, Sequence[EventDraft]]], *, returning: bool = True
) -> list[list[Event]] | None:
    """:func:`append` for several channels at once: one transaction, one commit.

    ``batches`` is ``[(channel, drafts), ...]`` (a channel may come more than once: its
    drafts keep the order given). Returns each batch's events, in the order given, or
    ``None`` with ``returning=False`` (a caller that needs none back is spared a model
    instance per row: the batched delta flush). Every channel gets contiguous seqs
    exactly as :func:`append` gives them; the channels are locked in a fixed order, so
    two processes flushing overlapping sets cannot deadlock. On PostgreSQL the seqs of
    all channels are reserved and the events inserted in one statement. Retried whole on
    a lost connection, and exactly-once like :func:`append`. The channels must exist
    (streams of runs write to their run's channel).
    """
    batches = [(validate_name(name), list(drafts)) for name, drafts in batches if drafts]
    if not batches:
        return [] if returning else None
    using = router.db_for_write(Event)
    now = timezone.now()
    by_channel: dict[str, list[EventDraft]] = {}
    for name, drafts in batches:
        by_channel.setdefault(name, []).extend(drafts)
    attempts = 0

    def write() -> dict[str, list[InsertedRow]]:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            done = _already_appended_many(by_channel, now, using)
            if done is not None:
                return done
        with transaction.atomic(using=using):
            if connections[using].vendor == "postgresql":
                return _append_many_postgresql(by_channel, using, now)
            # Lock order: by id, whoever flushes (a single append locks one row only).
            locked = list(
                Channel.objects.using(using)
                .select_for_update()
                .filter(name__in=list(by_channel))
                .order_by("id")
                .values_list("name", flat=True)
            )
            _refuse_missing(by_channel, locked)
            return {
                name: _rows(_reserve_and_insert(name, drafts, None, using, now))
                for name, drafts in by_channel.items()
            }

    written = retrying(write, using=using)
    announced = []
    for name, drafts in by_channel.items():
        first_seq = written[name][0][1]
        announced.append((name, first_seq, frame_texts(first_seq, drafts, now)))
    transaction.on_commit(partial(get_wire().send_events_many, announced), using=using)
    release(using)
    if not returning:
        return None
    events = {
        name: _inserted_events(written[name], drafts, now) for name, drafts in by_channel.items()
    }
    # Hand each batch its own events back, in the order the caller gave them.
    taken = dict.fromkeys(by_channel, 0)
    out: list[list[Event]] = []
    for name, drafts in batches:
        start = taken[name]
        taken[name] = start + len(drafts)
        out.append(events[name][start : start + len(drafts)])
    return out


def _rows(events: Sequence[Event]) -> list[InsertedRow]:
    return [(event.pk, event.seq, event.channel_id) for event in events]


def _refuse_missing(by_channel: dict[str, list[EventDraft]], locked: Sequence[str]) -> None:
    missing = set(by_channel) - set(locked)
    if missing:
        raise ValueError(f"No channel {sorted(missing)[0]!r}: append_many() creates none.")


def _append_many_postgresql(
    by_channel: dict[str, list[EventDraft]], using: str, now: Any
) -> dict[str, list[InsertedRow]]:
    """Lock the channels, then one statement: every channel's seqs reserved, every event
    inserted.

    Both statements have a fixed text whatever the batch holds (the rows travel as one
    JSON document, the names as one array), so neither is parsed again by the driver for
    each batch: splitting and quoting a statement with a placeholder per value was a
    fifth of a busy worker's CPU.
    """
    connection = connections[using]
    quote = connection.ops.quote_name
    channel_table, event_table = quote(Channel._meta.db_table), quote(Event._meta.db_table)
    with connection.cursor() as cursor:
        # Lock order: by id, whoever flushes (a single append locks one row only).
        cursor.execute(
            f"SELECT name FROM {channel_table} WHERE name = ANY(%s) ORDER BY id FOR UPDATE",  # noqa: S608
            [list(by_channel)],
        )
        _refuse_missing(by_channel, [name for (name,) in cursor.fetchall()])
        cursor.execute(
            f"WITH v AS (SELECT * FROM json_to_recordset(%s::json) "  # noqa: S608
            "AS r(o int, ch text, name text, run_id uuid, data jsonb)), "
            "n AS (SELECT ch, count(*) AS k FROM v GROUP BY ch), "
            f"c AS (UPDATE {channel_table} AS t SET last_seq = t.last_seq + n.k, "
            "last_event_at = %s FROM n WHERE t.name = n.ch "
            "RETURNING t.id, t.name, t.last_seq, n.k), "
            f"ins AS (INSERT INTO {event_table} (channel_id, seq, name, run_id, data, created_at) "
            "SELECT c.id, c.last_seq - c.k + row_number() OVER (PARTITION BY v.ch ORDER BY v.o), "
            "v.name, v.run_id, v.data, %s FROM v JOIN c ON c.name = v.ch "
            "RETURNING id, seq, channel_id) "
            "SELECT ins.id, ins.seq, ins.channel_id, c.name FROM ins JOIN c ON c.id = ins.channel_id "
            "ORDER BY c.name, ins.seq",
            [_rows_json(by_channel), now, now],
        )
        inserted = cursor.fetchall()
    grouped: dict[str, list[InsertedRow]] = {}
    for event_id, seq, channel_id, name in inserted:
        grouped.setdefault(name, []).append((event_id, seq, channel_id))
    for name, drafts in by_channel.items():
        got = len(grouped.get(name, ()))
        if got != len(drafts):  # pragma: no cover - the channels are locked above
            raise RuntimeError(f"append_many() wrote {got} of {len(drafts)} on {name!r}.")
    return grouped


def _rows_json(by_channel: dict[str, list[EventDraft]]) -> str:
    """The drafts as the JSON array the batched insert reads, around each draft's
    already-encoded data."""
    names: dict[str, str] = {}
    parts = []
    ordinal = 0
    for channel, drafts in by_channel.items():
        channel_json = json.dumps(channel)
        for draft in drafts:
            ordinal += 1
            name_json = names.get(draft.name)
            if name_json is None:
                name_json = names[draft.name] = json.dumps(draft.name)
            run_json = "null" if draft.run_id is None else json.dumps(str(draft.run_id))
            parts.append(
                f'{{"o":{ordinal},"ch":{channel_json},"name":{name_json},'
                f'"run_id":{run_json},"data":{draft.data_json}}}'
            )
    return f"[{','.join(parts)}]"


def _already_appended_many(
    by_channel: dict[str, list[EventDraft]], now: Any, using: str
) -> dict[str, list[InsertedRow]] | None:
    """The rows of an earlier attempt of an :func:`append_many`, if it committed (it
    wrote all of its channels or none)."""
    out = {}
    for name, drafts in by_channel.items():
        found = _already_appended(name, drafts, now, using)
        if found is None:
            return None
        out[name] = _rows(found)
    return out


def frame_texts(first_seq: int, drafts: Sequence[EventDraft], created_at: Any) -> list[str]:
    """The wire frames (``to_frame()`` as JSON text) of ``drafts`` just appended from
    ``first_seq`` on at ``created_at``, built around each draft's encoded data instead of
    encoding the data again."""
    ts = created_at.isoformat()  # one write: one timestamp for all its events
    names: dict[str, str] = {}
    runs: dict[Any, str] = {}
    texts = []
    for seq, draft in enumerate(drafts, start=first_seq):
        name_json = names.get(draft.name)
        if name_json is None:
            name_json = names[draft.name] = json.dumps(draft.name)
        run_json = runs.get(draft.run_id)
        if run_json is None:
            run_json = runs[draft.run_id] = json.dumps(str(draft.run_id) if draft.run_id else None)
        texts.append(
            f'{{"type":"event","seq":{seq},"event":{name_json},"run":{run_json},'
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
            return _inserted_events(inserted, drafts, now)
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
