"""``GET <channel>/events/``: the log as JSON pages, for clients without a WebSocket."""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse

from agent_channels.channel.names import InvalidChannelName, validate_name
from agent_channels.conf import get_config
from agent_channels.models import Channel, Event
from agent_channels.views.http import check_read, error, int_param

__all__ = ["events"]

#: Rows fetched from the database at a time while a page fills (one query, a cursor): a
#: page of large events stops at MAX_PAGE_BYTES having held at most this many beyond it.
_FETCH_ROWS = 50


def _page(
    channel_id: int, after: int, head: int, limit: int, max_bytes: int
) -> tuple[list[str], int]:
    """Up to ``limit`` events after ``after`` as JSON texts, and the last one's seq; the page
    stops before ``max_bytes`` (the first event always goes, however large: a page must make
    progress)."""
    texts: list[str] = []
    size = 0
    rows = (
        Event.objects.filter(channel_id=channel_id, seq__gt=after, seq__lte=head)
        .order_by("seq")[:limit]
        .iterator(chunk_size=_FETCH_ROWS)
    )
    for event in rows:
        text = json.dumps(event.to_frame(), ensure_ascii=False, separators=(",", ":"))
        size += len(text.encode("utf-8")) + 1
        if texts and size > max_bytes:
            break
        texts.append(text)
        after = event.seq
    return texts, after


def events(request: HttpRequest, channel: str) -> HttpResponse:
    """``GET <channel>/events/?since=N&limit=M``: a page of events with ``seq > N``."""
    if request.method not in ("GET", "HEAD"):
        # JSON like every other answer here, so clients can parse any error the same way.
        response = error(405, "method_not_allowed", "Use GET.")
        response["Allow"] = "GET, HEAD"
        return response
    config = get_config()
    try:
        name = validate_name(channel)
    except InvalidChannelName as exc:
        return error(400, "invalid_channel", str(exc))
    try:
        since = int_param(request, "since", 0)
        limit = int_param(request, "limit", config["PAGE_SIZE"])
    except ValueError as exc:
        return error(400, "invalid_parameter", str(exc))
    if not 1 <= limit <= config["MAX_PAGE_SIZE"]:
        return error(400, "invalid_parameter", f"'limit' must be 1 to {config['MAX_PAGE_SIZE']}.")
    denied = check_read(request, name)
    if denied is not None:
        return denied
    row = Channel.objects.filter(name=name).values_list("id", "last_seq", "pruned_seq").first()
    channel_id, head, pruned = row if row is not None else (None, 0, 0)
    if since < pruned and "since" in request.GET:
        return error(
            410, "history_pruned", f"Events up to seq {pruned} were pruned.", first_seq=pruned + 1
        )
    if since > head:
        return error(
            400, "since_ahead", f"since={since} is past the newest event ({head}).", last_seq=head
        )
    after = max(since, pruned)
    texts, last_seq = (
        _page(channel_id, after, head, limit, config["MAX_PAGE_BYTES"])
        if channel_id is not None
        else ([], after)
    )
    # Written out rather than through JsonResponse: each event was serialised once already,
    # to measure it.
    body = (
        f'{{"channel":{json.dumps(name, ensure_ascii=False)},'
        f'"events":[{",".join(texts)}],'
        f'"last_seq":{last_seq},"head_seq":{head},"has_more":{json.dumps(last_seq < head)}}}'
    )
    return HttpResponse(body.encode("utf-8"), content_type="application/json")
