"""The Durable Streams HTTP surface: PUT, POST, DELETE, HEAD, GET (catch-up, long-poll, SSE).

Every view is async: a long-poll or an SSE response waits on the channel layer, not in a
thread, and database work runs in short ``database_sync_to_async`` hops.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from agent_channels.channel.names import InvalidChannelName, validate_name
from agent_channels.channel.wire import register_server_loop
from agent_channels.conf import get_config
from agent_channels.durable_streams import store
from agent_channels.durable_streams.access import get_stream_policy
from agent_channels.durable_streams.live import Waiter, announce
from agent_channels.durable_streams.sources import ChannelSource, Source, StreamSource
from agent_channels.durable_streams.store import StreamError, format_offset, parse_offset

__all__ = ["channel_stream", "csrf_refusal", "stream"]

#: The longest stream path, in UTF-8 bytes (Stream.path holds 1,024 characters).
MAX_PATH_BYTES = 1024
#: Content types, Stream-Seq values and producer ids are stored in 255-character columns.
MAX_HEADER_CHARS = 255
_DECIMAL = re.compile(r"^(0|[1-9][0-9]*)$")
_DIGITS = re.compile(r"^[0-9]+$")
_MEDIA_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+")
#: Cursors count 20-second intervals from this moment (the protocol's suggested epoch).
_CURSOR_EPOCH = datetime(2024, 10, 9, tzinfo=UTC).timestamp()
_CURSOR_INTERVAL = 20

_EXPOSED = (
    "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Stream-TTL, "
    "Stream-Expires-At, Stream-SSE-Data-Encoding, Producer-Epoch, Producer-Seq, "
    "Producer-Expected-Seq, Producer-Received-Seq, ETag, Content-Type, Location"
)
_ALLOWED_HEADERS = (
    "Content-Type, Authorization, If-None-Match, Stream-Seq, Stream-TTL, Stream-Expires-At, "
    "Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq, Stream-Forked-From, "
    "Stream-Fork-Offset, Stream-Fork-Sub-Offset, X-CSRFToken"
)


def _cursor(client: str | None) -> str:
    """The Stream-Cursor for a live response: never at or below the one the client sent."""
    current = int((time.time() - _CURSOR_EPOCH) // _CURSOR_INTERVAL)
    if client and _DIGITS.match(client) and len(client) < 19 and int(client) >= current:
        # Jitter of 1 s to an hour, in intervals, so cached responses cannot cycle.
        return str(int(client) + max(1, -(-random.randint(1, 3600) // _CURSOR_INTERVAL)))  # noqa: S311
    return str(current)


def _finish(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """Headers every answer carries: anti-sniffing and, when configured, CORS."""
    response["X-Content-Type-Options"] = "nosniff"
    response["Cross-Origin-Resource-Policy"] = "cross-origin"
    origins = get_config()["DURABLE_STREAMS_CORS_ORIGINS"]
    origin = request.headers.get("Origin")
    if origins == "*" or (origin and isinstance(origins, list | tuple) and origin in origins):
        response["Access-Control-Allow-Origin"] = "*" if origins == "*" else str(origin)
        response["Access-Control-Allow-Methods"] = "GET, HEAD, POST, PUT, DELETE, OPTIONS"
        response["Access-Control-Allow-Headers"] = _ALLOWED_HEADERS
        response["Access-Control-Expose-Headers"] = _EXPOSED
        if origins != "*":
            response["Vary"] = "Origin"
    return response


def _response(
    status: int,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> HttpResponseBase:
    response = HttpResponse(body, status=status)
    if content_type is None:
        del response["Content-Type"]
    else:
        response["Content-Type"] = content_type
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _error(exc: StreamError) -> HttpResponseBase:
    return _response(exc.status, exc.headers, exc.message.encode(), "text/plain; charset=utf-8")


def _text_error(status: int, message: str) -> HttpResponseBase:
    return _error(StreamError(status, message))


async def _denied(request: HttpRequest, allowed: bool) -> HttpResponseBase | None:
    if allowed:
        return None
    user = await request.auser()
    if not user.is_authenticated:
        return _text_error(401, "Log in to use this stream.")
    return _text_error(403, "You may not use this stream.")


def csrf_refusal(request: HttpRequest, user: Any) -> HttpResponse | None:
    """Session users must send the CSRF token, as for any Django form: otherwise any page
    they visit could write to their streams. Clients without a session need none."""
    if not getattr(user, "is_authenticated", False):
        return None
    result = CsrfViewMiddleware(lambda r: HttpResponse()).process_view(
        request, lambda r: HttpResponse(), (), {}
    )
    return result if isinstance(result, HttpResponse) else None


def _read_body(request: HttpRequest) -> bytes:
    limit = get_config()["DURABLE_STREAMS_MAX_APPEND_BYTES"]
    length = request.META.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > limit:
        raise StreamError(413, f"The body may be at most {limit} bytes.")
    # read() rather than .body: the limit is ours, not DATA_UPLOAD_MAX_MEMORY_SIZE.
    body = request.read(limit + 1)
    if len(body) > limit:
        raise StreamError(413, f"The body may be at most {limit} bytes.")
    return body


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


def _mount_prefix(request: HttpRequest, path: str) -> str:
    full = request.path
    return full[: len(full) - len(path)] if full.endswith(path) else "/"


def _source_path(request: HttpRequest, path: str, header: str) -> str:
    """A ``Stream-Forked-From`` value as a stream path: relative to the mount, or absolute."""
    value = unquote(header.strip())
    prefix = _mount_prefix(request, path)
    if value.startswith(prefix):
        return value[len(prefix) :]
    return value.lstrip("/")


# -- the write side ---------------------------------------------------------------------


async def _create(request: HttpRequest, path: str) -> HttpResponseBase:
    h = request.headers
    content_type = h.get("Content-Type", "").strip()
    if len(content_type) > MAX_HEADER_CHARS:
        return _text_error(400, f"Content-Type may be at most {MAX_HEADER_CHARS} characters.")
    forked_from_header = h.get("Stream-Forked-From")
    if not _MEDIA_TYPE.match(content_type):
        content_type = ""
    ttl_text, expires_text = h.get("Stream-TTL"), h.get("Stream-Expires-At")
    if ttl_text is not None and expires_text is not None:
        return _text_error(400, "Send Stream-TTL or Stream-Expires-At, not both.")
    ttl = None
    if ttl_text is not None:
        # Capped at 10^10 s (317 years) so expiry dates stay within datetime's range.
        if not _DECIMAL.match(ttl_text) or len(ttl_text) > 11 or int(ttl_text) > 10**10:
            return _text_error(400, "Stream-TTL must be a whole number of seconds.")
        ttl = int(ttl_text)
    expires_at = None
    if expires_text is not None:
        if len(expires_text) > 64:
            return _text_error(400, "Stream-Expires-At must be an RFC 3339 timestamp.")
        try:
            expires_at = datetime.fromisoformat(expires_text.strip().replace("Z", "+00:00"))
        except ValueError:
            return _text_error(400, "Stream-Expires-At must be an RFC 3339 timestamp.")
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
    fork_offset_text = h.get("Stream-Fork-Offset")
    sub_text = h.get("Stream-Fork-Sub-Offset")
    fork_offset = None
    sub_offset = 0
    if forked_from_header is None and (fork_offset_text is not None or sub_text is not None):
        return _text_error(400, "Stream-Fork-Offset needs Stream-Forked-From.")
    if fork_offset_text is not None:
        fork_offset = parse_offset(fork_offset_text.strip())
        if fork_offset is None or fork_offset_text.strip() == "-1":
            return _text_error(400, "Invalid Stream-Fork-Offset.")
    if sub_text is not None:
        if not _DECIMAL.match(sub_text.strip()):
            return _text_error(400, "Invalid Stream-Fork-Sub-Offset.")
        sub_offset = int(sub_text.strip())
    forked_from = None
    if forked_from_header is not None:
        forked_from = _source_path(request, path, forked_from_header)
        readable = await database_sync_to_async(_can_read_stream)(request, forked_from)
        if not readable:
            return _text_error(404, "Source stream not found")
    body = _read_body(request)
    head, created = await database_sync_to_async(store.create)(
        path,
        content_type=content_type or None,
        body=body,
        closed=_is_true(h.get("Stream-Closed")),
        ttl_seconds=ttl,
        expires_at=expires_at,
        expires_at_text=expires_text.strip() if expires_text else "",
        forked_from=forked_from,
        fork_offset=fork_offset,
        fork_offset_text=fork_offset_text,
        fork_sub_offset=sub_offset,
    )
    headers = {"Stream-Next-Offset": format_offset(head.tail)}
    if head.closed:
        headers["Stream-Closed"] = "true"
    if created:
        headers["Location"] = request.build_absolute_uri()
    return _response(201 if created else 200, headers, content_type=head.content_type)


def _can_read_stream(request: HttpRequest, path: str) -> bool:
    return get_stream_policy().can_read(request.user, path)


def _producer(request: HttpRequest) -> store.Producer | None:
    h = request.headers
    values = [h.get("Producer-Id"), h.get("Producer-Epoch"), h.get("Producer-Seq")]
    if all(v is None for v in values):
        return None
    producer_id, epoch, seq = values
    if producer_id is None or epoch is None or seq is None:
        raise StreamError(400, "Send Producer-Id, Producer-Epoch and Producer-Seq together.")
    if not producer_id.strip() or len(producer_id) > MAX_HEADER_CHARS:
        raise StreamError(400, f"Producer-Id must be 1 to {MAX_HEADER_CHARS} characters.")
    for name, value in (("Producer-Epoch", epoch), ("Producer-Seq", seq)):
        if not _DIGITS.match(value) or int(value) > store.MAX_SAFE_INTEGER:
            raise StreamError(400, f"{name} must be a non-negative integer below 2^53.")
    return store.Producer(producer_id, int(epoch), int(seq))


async def _append(request: HttpRequest, path: str) -> HttpResponseBase:
    producer = _producer(request)
    writer_seq = request.headers.get("Stream-Seq")
    if writer_seq is not None and len(writer_seq) > MAX_HEADER_CHARS:
        return _text_error(400, f"Stream-Seq may be at most {MAX_HEADER_CHARS} characters.")
    body = _read_body(request)
    close = _is_true(request.headers.get("Stream-Closed"))
    if not body and not close:
        return _text_error(400, "An append needs a body (or Stream-Closed: true).")
    result = await database_sync_to_async(store.append)(
        path,
        body,
        content_type=request.headers.get("Content-Type"),
        close=close,
        writer_seq=writer_seq,
        producer=producer,
    )
    if result.changed:
        await announce(path)
    return _response(result.status, result.headers)


async def _delete(request: HttpRequest, path: str) -> HttpResponseBase:
    await database_sync_to_async(store.delete)(path)
    await announce(path)
    return _response(204)


async def _head(source: Source) -> HttpResponseBase:
    head = await source.head()
    headers = {"Stream-Next-Offset": format_offset(head.tail), "Cache-Control": "no-store"}
    if head.closed:
        headers["Stream-Closed"] = "true"
    if head.ttl_seconds is not None:
        headers["Stream-TTL"] = str(head.ttl_seconds)
    if head.expires_at_text:
        headers["Stream-Expires-At"] = head.expires_at_text
    closed = ":c" if head.closed else ""
    headers["ETag"] = f'"{source.etag_id(head)}:-1:{format_offset(head.tail)}{closed}"'
    return _response(200, headers, content_type=head.content_type)


# -- the read side ----------------------------------------------------------------------


def _body(head: store.Head, chunks: list[tuple[int, bytes]]) -> bytes:
    if head.is_json:
        return b"[" + b",".join(data for _, data in chunks) + b"]"
    return b"".join(data for _, data in chunks)


async def _read(request: HttpRequest, source: Source) -> HttpResponseBase:
    config = get_config()
    offsets = request.GET.getlist("offset")
    if len(offsets) > 1:
        return _text_error(400, "Send one offset.")
    offset = offsets[0] if offsets else None
    if offset is not None and offset != "now" and parse_offset(offset) is None:
        return _text_error(400, "Invalid offset.")
    live = request.GET.get("live")
    if live in ("long-poll", "sse") and offset is None:
        return _text_error(400, f"live={live} needs an offset.")
    cursor = request.GET.get("cursor")
    after = None if offset == "now" else parse_offset(offset or "-1")
    if live == "sse":
        return await _sse(request, source, after, cursor)
    if offset == "now" and live != "long-poll":
        head = (await source.read(None)).head
        headers = {
            "Stream-Next-Offset": format_offset(head.tail),
            "Stream-Up-To-Date": "true",
            "Cache-Control": "no-store",
        }
        if head.closed:
            headers["Stream-Closed"] = "true"
        body = b"[]" if head.is_json else b""
        return _response(200, headers, body, head.content_type)
    if live != "long-poll":
        return _catch_up(request, offset, await source.read(after))
    async with Waiter(source.groups) as waiter:
        result = await source.read(after)
        start = result.head.tail if after is None else after
        if result.chunks or start != result.head.tail:
            return _catch_up(request, offset, result, cursor)
        deadline = time.monotonic() + config["DURABLE_STREAMS_LONG_POLL_SECONDS"]
        while not result.head.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await waiter.next(remaining)
            result = await source.read(start)
            if result.chunks:
                return _catch_up(request, offset, result, cursor)
    headers = {"Stream-Next-Offset": format_offset(start), "Stream-Up-To-Date": "true"}
    if result.head.closed:
        headers["Stream-Closed"] = "true"
    else:
        headers["Stream-Cursor"] = _cursor(cursor)
    return _response(204, headers)


def _catch_up(
    request: HttpRequest, offset: str | None, result: store.ReadResult, cursor: str | None = None
) -> HttpResponseBase:
    head = result.head
    next_offset = format_offset(result.next_position)
    headers = {"Stream-Next-Offset": next_offset}
    at_end = result.up_to_date and result.next_position >= head.tail
    if result.up_to_date:
        headers["Stream-Up-To-Date"] = "true"
    closed = head.closed and at_end
    if closed:
        headers["Stream-Closed"] = "true"
    if request.GET.get("live") == "long-poll":
        headers["Stream-Cursor"] = _cursor(cursor)
    etag = f'"{result.etag}:{offset or "-1"}:{next_offset}{":c" if closed else ""}"'
    headers["ETag"] = etag
    # Bytes at an offset never change, so a chunk may be cached; an empty answer at the
    # tail will change with the next append, so it may not.
    headers["Cache-Control"] = (
        "private, max-age=60, stale-while-revalidate=300" if result.chunks else "no-store"
    )
    if request.headers.get("If-None-Match") == etag:
        return _response(304, {"ETag": etag, "Cache-Control": headers["Cache-Control"]})
    return _response(200, headers, _body(head, result.chunks), head.content_type)


def _sse_event(kind: str, payload: str) -> bytes:
    # Every line of the payload gets its own "data:" (CR, LF and CRLF alike), so a payload
    # cannot inject events. No space after the colon: clients strip exactly one.
    lines = re.split(r"\r\n|\r|\n", payload)
    return (f"event: {kind}\n" + "".join(f"data:{line}\n" for line in lines) + "\n").encode()


async def _sse(
    request: HttpRequest, source: Source, after: int | None, cursor: str | None
) -> HttpResponseBase:
    config = get_config()
    waiter = Waiter(source.groups)
    await waiter.__aenter__()
    try:
        first = await source.read(after)
    except BaseException:
        await waiter.__aexit__(None, None, None)
        raise
    head = first.head
    binary = not (head.is_json or head.content_type.lower().startswith("text/"))

    async def events() -> AsyncIterator[bytes]:
        result: store.ReadResult | None = first
        position = head.tail if after is None else after
        ends_at = time.monotonic() + config["DURABLE_STREAMS_SSE_SECONDS"]
        keepalive = config["DURABLE_STREAMS_LONG_POLL_SECONDS"]
        try:
            while True:
                if result is None:
                    try:
                        result = await source.read(position)
                    except StreamError:
                        return  # deleted or expired while we followed it
                if result.chunks:
                    data = _body(result.head, result.chunks)
                    text = (
                        base64.b64encode(data).decode()
                        if binary
                        else data.decode("utf-8", "replace")
                    )
                    yield _sse_event("data", text)
                    position = result.next_position
                control: dict[str, Any] = {"streamNextOffset": format_offset(position)}
                at_tail = position >= result.head.tail
                if result.head.closed and at_tail:
                    control["streamClosed"] = True
                    control["upToDate"] = True
                    yield _sse_event("control", json.dumps(control))
                    return
                control["streamCursor"] = _cursor(cursor)
                if at_tail:
                    control["upToDate"] = True
                yield _sse_event("control", json.dumps(control))
                result = None
                if not at_tail:
                    continue
                while True:
                    remaining = ends_at - time.monotonic()
                    if remaining <= 0:
                        return  # clients reconnect from the last control's offset
                    if await waiter.next(min(remaining, keepalive)):
                        break  # woken (or checking after a burst): read again
                    if time.monotonic() < ends_at:
                        keep = {
                            "streamNextOffset": format_offset(position),
                            "streamCursor": _cursor(cursor),
                            "upToDate": True,
                        }
                        yield _sse_event("control", json.dumps(keep))
        finally:
            await asyncio.shield(waiter.__aexit__(None, None, None))

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    # nginx buffers proxied responses unless told not to; SSE must flow event by event.
    response["X-Accel-Buffering"] = "no"
    if binary:
        response["Stream-SSE-Data-Encoding"] = "base64"
    return response


# -- dispatch ---------------------------------------------------------------------------


async def _dispatch(
    request: HttpRequest, handlers: dict[str, Callable[[], Awaitable[HttpResponseBase]]]
) -> HttpResponseBase:
    register_server_loop(asyncio.get_running_loop())
    method = request.method or "GET"
    if method == "OPTIONS":
        return _finish(request, _response(204, {"Allow": ", ".join(handlers)}))
    handler = handlers.get(method)
    if handler is None:
        response = _text_error(405, "Method not allowed")
        response["Allow"] = ", ".join([*handlers, "OPTIONS"])
        return _finish(request, response)
    try:
        response = await handler()
    except StreamError as exc:
        response = _error(exc)
    return _finish(request, response)


@csrf_exempt
async def stream(request: HttpRequest, path: str) -> HttpResponseBase:
    """Any path under the mount (except ``channels/…``) is a stream."""
    if len(path.encode("utf-8")) > MAX_PATH_BYTES or not path.isprintable():
        # Longer keys overflow a PostgreSQL index row; control characters (NUL) no
        # database stores alike.
        return _finish(
            request,
            _text_error(400, f"A stream path is 1 to {MAX_PATH_BYTES} bytes of printable text."),
        )
    source = StreamSource(path)
    user = await request.auser()
    method = request.method or "GET"
    if method in ("PUT", "POST", "DELETE"):
        refused = csrf_refusal(request, user)
        if refused is not None:
            return _finish(request, refused)
        policy_call = get_stream_policy().can_write
    else:
        policy_call = get_stream_policy().can_read
    if method != "OPTIONS":
        allowed = await database_sync_to_async(policy_call)(user, path)
        denied = await _denied(request, allowed)
        if denied is not None:
            return _finish(request, denied)
    return await _dispatch(
        request,
        {
            "GET": lambda: _read(request, source),
            "HEAD": lambda: _head(source),
            "PUT": lambda: _create(request, path),
            "POST": lambda: _append(request, path),
            "DELETE": lambda: _delete(request, path),
        },
    )


@csrf_exempt
async def channel_stream(request: HttpRequest, channel: str) -> HttpResponseBase:
    """``channels/<channel>``: an agent channel as a read-only JSON stream, one event a message."""
    try:
        name = validate_name(channel)
    except InvalidChannelName as exc:
        return _finish(request, _text_error(400, str(exc)))
    if request.method not in ("OPTIONS", "GET", "HEAD"):
        response = _text_error(405, "Agent channels are read-only streams.")
        response["Allow"] = "GET, HEAD, OPTIONS"
        return _finish(request, response)
    if request.method != "OPTIONS":
        from agent_channels.access import get_access_policy

        user = await request.auser()
        allowed = await database_sync_to_async(get_access_policy().can_read)(user, name)
        denied = await _denied(request, allowed)
        if denied is not None:
            return _finish(request, denied)
    source = ChannelSource(name)
    return await _dispatch(
        request,
        {"GET": lambda: _read(request, source), "HEAD": lambda: _head(source)},
    )
