"""Durable Streams on the ORM: create, append, close, delete and read, synchronously.

The async views call these through ``database_sync_to_async``. A write first UPDATEs its
stream's row, which takes the row lock on PostgreSQL and the write lock on SQLite before
anything is read, so concurrent appends (and idempotent producers) are serialised per
stream and the producer state commits in the same transaction as the bytes.

Positions are byte counts: a chunk's ``end`` is the stream position after its bytes, and
an offset is that position as ``0000000000000000_<16 digits>``, so offsets sort as strings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from agent_channels.durable_streams.models import Stream, StreamChunk, StreamProducer

__all__ = [
    "JSON_TYPE",
    "AppendResult",
    "Head",
    "ReadResult",
    "StreamError",
    "append",
    "create",
    "delete",
    "format_offset",
    "head",
    "normalize_type",
    "parse_offset",
    "read",
]

JSON_TYPE = "application/json"
OCTET_STREAM = "application/octet-stream"
#: The largest position an offset may name; larger ones are "past the tail".
MAX_POSITION = 2**62
_OFFSET = re.compile(r"^(\d{1,19})_(\d{1,19})$")
#: Producer-Epoch and Producer-Seq must fit a JavaScript number.
MAX_SAFE_INTEGER = 2**53 - 1


class StreamError(Exception):
    """A request the protocol answers with an error status; ``headers`` go with it."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def format_offset(position: int) -> str:
    return f"{0:016d}_{position:016d}"


def parse_offset(text: str) -> int | None:
    """A position from an offset token; -1 means the start. None if malformed."""
    if text == "-1":
        return 0
    match = _OFFSET.match(text)
    if match is None:
        return None
    high, low = int(match[1]), int(match[2])
    # Offsets compare as strings; ours all start with sixteen zeros, so a token with
    # anything else there sorts after every offset we minted.
    if high:
        return MAX_POSITION
    return min(low, MAX_POSITION)


def normalize_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


@dataclass
class Head:
    """What HEAD and every response need to know about a stream."""

    pk: int
    path: str
    content_type: str
    tail: int
    closed: bool
    ttl_seconds: int | None
    expires_at_text: str
    soft_deleted: bool

    @property
    def is_json(self) -> bool:
        return normalize_type(self.content_type) == JSON_TYPE


@dataclass
class ReadResult:
    head: Head
    #: (end position, bytes) per chunk, oldest first.
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    up_to_date: bool = True
    #: The ETag's first part: which stream (a stream's id is never reused).
    etag: str = ""

    @property
    def next_position(self) -> int:
        return self.chunks[-1][0] if self.chunks else self.head.tail


@dataclass
class AppendResult:
    head: Head
    #: 200 (new data from a producer), 204 (new data, or a duplicate, or a close).
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    #: True when new bytes or a close were committed: live readers must be woken.
    changed: bool = False


def _head(stream: Stream) -> Head:
    return Head(
        pk=stream.pk,
        path=stream.path,
        content_type=stream.content_type,
        tail=stream.tail,
        closed=stream.closed,
        ttl_seconds=stream.ttl_seconds,
        expires_at_text=stream.expires_at_text,
        soft_deleted=stream.soft_deleted,
    )


def _expired(stream: Stream, now: datetime) -> bool:
    if stream.expires_at is not None and now >= stream.expires_at:
        return True
    return stream.ttl_seconds is not None and now >= stream.accessed_at + timedelta(
        seconds=stream.ttl_seconds
    )


def _collect(stream: Stream) -> None:
    """Delete ``stream`` and then each soft-deleted source no fork needs any more."""
    current: Stream | None = stream
    while current is not None:
        parent_id = current.forked_from_id
        current.delete()
        current = None
        if parent_id is not None:
            parent = Stream.objects.filter(pk=parent_id, soft_deleted=True).first()
            if parent is not None and not parent.forks.exists():
                current = parent


def _get(path: str, *, lock: bool = False) -> Stream | None:
    """The stream at ``path`` (soft-deleted ones included), expiring it when its time is up."""
    if lock:
        # Take the row (PostgreSQL) or database (SQLite) write lock before reading.
        Stream.objects.filter(path=path).update(tail=F("tail"))
    stream = Stream.objects.filter(path=path).first()
    if stream is None or not _expired(stream, timezone.now()):
        return stream
    if stream.forks.exists():
        if not stream.soft_deleted:
            Stream.objects.filter(pk=stream.pk).update(soft_deleted=True)
            stream.soft_deleted = True
        return stream
    _collect(stream)
    return None


def _live(path: str, *, lock: bool = False) -> Stream:
    stream = _get(path, lock=lock)
    if stream is None:
        raise StreamError(404, "Stream not found")
    if stream.soft_deleted:
        raise StreamError(410, "Stream is gone")
    return stream


def head(path: str) -> Head:
    """HEAD: the stream's metadata. Does not count as an access for the TTL."""
    return _head(_live(path))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_values(body: bytes, *, allow_empty: bool) -> list[str]:
    """One JSON text per message: a top-level array is flattened one level."""
    try:
        # NaN and Infinity are Python's extensions, not JSON: refuse them.
        parsed = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        values = parsed if isinstance(parsed, list) else [parsed]
        texts = [json.dumps(v, separators=(",", ":"), ensure_ascii=False) for v in values]
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise StreamError(400, "Invalid JSON") from None
    if not texts and not allow_empty:
        raise StreamError(400, "Empty arrays are not allowed")
    return texts


def _encode(content_type: str, body: bytes, *, creating: bool = False) -> bytes:
    """The bytes stored for one append: JSON messages are kept comma-joined."""
    if normalize_type(content_type) != JSON_TYPE or (creating and not body):
        return body
    return ",".join(_json_values(body, allow_empty=creating)).encode("utf-8")


def _add_chunk(stream: Stream, data: bytes) -> None:
    if not data:
        return
    stream.tail += len(data)
    StreamChunk.objects.create(stream=stream, end=stream.tail, data=data)


@transaction.atomic
def create(
    path: str,
    *,
    content_type: str | None,
    body: bytes,
    closed: bool,
    ttl_seconds: int | None,
    expires_at: datetime | None,
    expires_at_text: str,
    forked_from: str | None,
    fork_offset: int | None,
    fork_offset_text: str | None,
    fork_sub_offset: int,
) -> tuple[Head, bool]:
    """PUT: create the stream (or a fork); ``(head, created)``. Same config again is a no-op."""
    existing = _get(path, lock=True)
    if existing is not None:
        if existing.soft_deleted:
            raise StreamError(
                409, "A deleted stream with live forks holds this path until they are deleted"
            )
        source_path = existing.forked_from.path if existing.forked_from is not None else None
        requested_type = normalize_type(content_type) or (
            normalize_type(existing.content_type) if forked_from else OCTET_STREAM
        )
        same = (
            requested_type == normalize_type(existing.content_type)
            and ttl_seconds == existing.ttl_seconds
            and expires_at_text == existing.expires_at_text
            and closed == existing.closed
            and forked_from == source_path
            and (fork_offset is None or fork_offset == existing.fork_offset)
            and fork_sub_offset == existing.fork_sub_offset
        )
        if not same:
            raise StreamError(409, "Stream already exists with different configuration")
        return _head(existing), False

    now = timezone.now()
    stream = Stream(
        path=path,
        content_type=content_type or OCTET_STREAM,
        closed=closed,
        ttl_seconds=ttl_seconds,
        expires_at=expires_at,
        expires_at_text=expires_at_text,
        accessed_at=now,
    )
    prefix = b""
    if forked_from is not None:
        source = _get(forked_from)
        if source is None:
            raise StreamError(404, "Source stream not found")
        if source.soft_deleted:
            raise StreamError(409, "The source stream was deleted")
        if content_type and normalize_type(content_type) != normalize_type(source.content_type):
            raise StreamError(409, "Content type mismatch with source stream")
        stream.content_type = content_type or source.content_type
        position = source.tail if fork_offset is None else fork_offset
        if position > source.tail:
            raise StreamError(400, "Fork offset beyond source stream length")
        if ttl_seconds is None and expires_at is None:
            # A fork with no expiry of its own inherits its source's.
            stream.ttl_seconds = source.ttl_seconds
            stream.expires_at = source.expires_at
            stream.expires_at_text = source.expires_at_text
        stream.forked_from = source
        stream.fork_offset = position
        stream.tail = position
        if fork_sub_offset:
            prefix = _sub_offset_prefix(source, position, fork_sub_offset)
            stream.fork_sub_offset = fork_sub_offset
    data = _encode(stream.content_type, body, creating=True)
    stream.save()
    _add_chunk(stream, prefix)
    _add_chunk(stream, data)
    Stream.objects.filter(pk=stream.pk).update(tail=stream.tail)
    return _head(stream), True


def _sub_offset_prefix(source: Stream, position: int, count: int) -> bytes:
    """The first ``count`` messages (JSON) or bytes of the source's chunk after ``position``.

    The fork stores them as its own first chunk, so its offsets stay its own.
    """
    chunks = _chunks(source, position, limit_bytes=0)
    if not chunks:
        raise StreamError(400, "Invalid fork sub-offset: no data past the fork offset")
    data = chunks[0][1]
    if normalize_type(source.content_type) == JSON_TYPE:
        values = json.loads(b"[" + data + b"]")
        if count > len(values):
            raise StreamError(400, "Invalid fork sub-offset: past the next message boundary")
        return ",".join(json.dumps(v, separators=(",", ":")) for v in values[:count]).encode()
    if count > len(data):
        raise StreamError(400, "Invalid fork sub-offset: past the next message boundary")
    return data[:count]


@dataclass
class Producer:
    id: str
    epoch: int
    seq: int


def _check_producer(stream: Stream, producer: Producer) -> tuple[StreamProducer | None, Any]:
    """Kafka-style validation; returns (state row, None) to accept or (None, error result)."""
    state = StreamProducer.objects.filter(stream=stream, producer_id=producer.id).first()
    epoch_header = {"Producer-Epoch": str(producer.epoch)}
    if state is None or producer.epoch > state.epoch:
        if producer.seq != 0:
            if state is None:
                raise StreamError(
                    409,
                    "Producer sequence gap",
                    {"Producer-Expected-Seq": "0", "Producer-Received-Seq": str(producer.seq)},
                )
            raise StreamError(400, "A new producer epoch must start at sequence 0")
        if state is None:
            state = StreamProducer(stream=stream, producer_id=producer.id)
        state.epoch, state.last_seq = producer.epoch, 0
        return state, None
    if producer.epoch < state.epoch:
        raise StreamError(403, "Stale producer epoch", {"Producer-Epoch": str(state.epoch)})
    if producer.seq <= state.last_seq:
        return None, {**epoch_header, "Producer-Seq": str(state.last_seq)}
    if producer.seq > state.last_seq + 1:
        raise StreamError(
            409,
            "Producer sequence gap",
            {
                "Producer-Expected-Seq": str(state.last_seq + 1),
                "Producer-Received-Seq": str(producer.seq),
            },
        )
    state.last_seq = producer.seq
    return state, None


def _closed_by(stream: Stream, producer: Producer | None) -> bool:
    by = stream.closed_by or {}
    return producer is not None and by == {
        "id": producer.id,
        "epoch": producer.epoch,
        "seq": producer.seq,
    }


@transaction.atomic
def append(
    path: str,
    body: bytes,
    *,
    content_type: str | None,
    close: bool,
    writer_seq: str | None,
    producer: Producer | None,
) -> AppendResult:
    """POST: append ``body`` (and/or close). Raises :class:`StreamError` for refusals."""
    stream = _live(path, lock=True)
    closed_headers = {"Stream-Closed": "true", "Stream-Next-Offset": format_offset(stream.tail)}
    if stream.closed:
        if _closed_by(stream, producer):
            assert producer is not None
            return AppendResult(
                _head(stream),
                204,
                {
                    **closed_headers,
                    "Producer-Epoch": str(producer.epoch),
                    "Producer-Seq": str(producer.seq),
                },
            )
        if close and not body and producer is None:
            return AppendResult(_head(stream), 204, closed_headers)
        raise StreamError(409, "Stream is closed", closed_headers)
    if body:
        if not content_type:
            raise StreamError(400, "Content-Type header is required")
        if normalize_type(content_type) != normalize_type(stream.content_type):
            raise StreamError(409, "Content-type mismatch")
    state = None
    if producer is not None:
        state, duplicate = _check_producer(stream, producer)
        if duplicate is not None:
            return AppendResult(_head(stream), 204, duplicate)
    if body and writer_seq is not None:
        if stream.writer_seq is not None and writer_seq <= stream.writer_seq:
            raise StreamError(409, "Sequence conflict")
        stream.writer_seq = writer_seq
    data = _encode(stream.content_type, body) if body else b""
    _add_chunk(stream, data)
    if close:
        stream.closed = True
        if producer is not None:
            stream.closed_by = {"id": producer.id, "epoch": producer.epoch, "seq": producer.seq}
    stream.accessed_at = timezone.now()
    stream.save(update_fields=["tail", "closed", "closed_by", "writer_seq", "accessed_at"])
    if state is not None:
        state.save()
    headers = {"Stream-Next-Offset": format_offset(stream.tail)}
    if stream.closed:
        headers["Stream-Closed"] = "true"
    status = 204
    if producer is not None:
        headers["Producer-Epoch"] = str(producer.epoch)
        headers["Producer-Seq"] = str(producer.seq)
        status = 200 if body else 204
    return AppendResult(_head(stream), status, headers, changed=True)


@transaction.atomic
def delete(path: str) -> None:
    """DELETE: remove the stream, or soft-delete it while forks still read its data."""
    stream = _live(path, lock=True)
    if stream.forks.exists():
        Stream.objects.filter(pk=stream.pk).update(soft_deleted=True)
    else:
        _collect(stream)


def _chunks(
    stream: Stream, after: int, limit_bytes: int, cap: int | None = None
) -> list[tuple[int, bytes]]:
    """Chunks of ``stream`` ending after ``after`` (and at or before ``cap``), fork sources first.

    Stops once ``limit_bytes`` are collected (0: the first chunk only).
    """
    out: list[tuple[int, bytes]] = []
    size = 0
    fork_offset = stream.fork_offset
    if stream.forked_from_id is not None and fork_offset is not None:
        if after < fork_offset:
            source = Stream.objects.get(pk=stream.forked_from_id)
            out = _chunks(
                source, after, limit_bytes, fork_offset if cap is None else min(cap, fork_offset)
            )
            size = sum(len(data) for _, data in out)
            if out and size >= limit_bytes:
                return out
        # The fork's own chunks all end past the fork point.
        after = max(after, fork_offset)
    qs = StreamChunk.objects.filter(stream_id=stream.pk, end__gt=after)
    if cap is not None:
        qs = qs.filter(end__lte=cap)
    for end, data in qs.order_by("end").values_list("end", "data").iterator(chunk_size=50):
        out.append((end, bytes(data)))
        size += len(data)
        if size >= limit_bytes:
            break
    return out


def read(path: str, after: int | None, limit_bytes: int, *, touch: bool = True) -> ReadResult:
    """GET: chunks after position ``after`` (None: the tail, i.e. nothing), up to ``limit_bytes``."""
    stream = _live(path)
    if touch and stream.ttl_seconds is not None:
        Stream.objects.filter(pk=stream.pk).update(accessed_at=timezone.now())
    result = ReadResult(_head(stream))
    if after is None or after >= stream.tail:
        return result
    result.chunks = _chunks(stream, after, limit_bytes)
    result.up_to_date = result.next_position >= stream.tail
    return result
