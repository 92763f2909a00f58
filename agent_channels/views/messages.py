"""``POST <channel>/messages/``: input, interrupt and cancel over HTTP.

A JSON API for session users: CSRF protection stays on (send the ``csrftoken``
cookie's value in the ``X-CSRFToken`` header).
"""

from __future__ import annotations

from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST

from agent_channels.channel.control import send_control
from agent_channels.channel.names import InvalidChannelName, validate_name
from agent_channels.conf import get_config
from agent_channels.views.http import check_send, error
from agent_channels.views.throttle import throttle
from agent_channels.ws.frames import FrameError, parse_client_frame

__all__ = ["post_message"]


@require_POST
def post_message(request: HttpRequest, channel: str) -> JsonResponse:
    """``POST <channel>/messages/``: the HTTP twin of a WebSocket input/interrupt/cancel frame."""
    try:
        name = validate_name(channel)
    except InvalidChannelName as exc:
        return error(400, "invalid_channel", str(exc))
    denied = throttle(request, "messages") or check_send(request, name)
    if denied is not None:
        return denied
    config = get_config()
    try:
        text = request.body.decode("utf-8")
        frame = parse_client_frame(text, None, config["MAX_CLIENT_FRAME_BYTES"])
    except UnicodeDecodeError:
        return error(400, "invalid_json", "The body is not UTF-8 JSON.")
    except FrameError as exc:
        return error(400, exc.code, exc.message)
    if frame.type == "ping":
        return error(400, "unknown_type", "Send input, interrupt or cancel.")
    try:
        seq = send_control(name, frame.type, frame.data, frame_id=frame.id, user=request.user)
    except DatabaseError:
        return error(503, "unavailable", "The message could not be stored; send it again.")
    return JsonResponse({"type": "ack", "id": frame.id, "seq": seq}, status=202)
