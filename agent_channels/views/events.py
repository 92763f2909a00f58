"""``GET <channel>/events/``: the log as JSON pages, for clients without a WebSocket."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from agent_channels.channel.log import read
from agent_channels.channel.names import InvalidChannelName, validate_name
from agent_channels.conf import get_config
from agent_channels.models import Channel
from agent_channels.views.http import check_read, error, int_param

__all__ = ["events"]


def events(request: HttpRequest, channel: str) -> JsonResponse:
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
    page = read(channel_id, after, head, limit) if channel_id is not None else []
    last_seq = page[-1].seq if page else after
    return JsonResponse(
        {
            "channel": name,
            "events": [event.to_frame() for event in page],
            "last_seq": last_seq,
            "head_seq": head,
            "has_more": last_seq < head,
        }
    )
