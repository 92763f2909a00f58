"""What every HTTP endpoint shares: JSON errors, query parameters, access checks."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import Any, TypeVar

from django.http import HttpRequest, JsonResponse

from agent_channels.access import get_access_policy
from agent_channels.channel.connections import TRANSIENT_ERRORS
from agent_channels.conf import get_config
from agent_channels.models import Channel
from agent_channels.ws.frames import FrameError

__all__ = [
    "check_read",
    "check_send",
    "error",
    "int_param",
    "json_body",
    "unavailable",
    "unavailable_on_database_errors",
]

logger = logging.getLogger(__name__)

#: What ``Retry-After`` says while the database is away: a blip is usually over by then.
RETRY_AFTER_SECONDS = 2

V = TypeVar("V", bound=Callable[..., Any])


def error(status: int, code: str, message: str, **extra: Any) -> JsonResponse:
    """The HTTP twin of the WebSocket error frame."""
    return JsonResponse({"type": "error", "code": code, "message": message, **extra}, status=status)


def int_param(request: HttpRequest, name: str, default: int) -> int:
    value = request.GET.get(name)
    if value is None or value == "":
        return default
    # isascii: str.isdigit() also accepts digits such as "²" that int() refuses.
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise ValueError(f"'{name}' must be a non-negative integer.")
    return int(value)


def check_read(request: HttpRequest, channel: str) -> JsonResponse | None:
    """A 401/403 response if the request's user may not read ``channel``."""
    if get_access_policy().can_read(request.user, channel):
        return None
    if not request.user.is_authenticated:
        return error(401, "unauthenticated", "Log in to read this channel.")
    return error(403, "forbidden", "You may not read this channel.")


def check_send(request: HttpRequest, channel: str, create: bool = False) -> JsonResponse | None:
    """A 401/403 response if the request's user may not send to ``channel``.

    ``create``: also allowed when the channel does not exist yet and the policy lets the
    user create it (starting a run on a new channel).
    """
    policy = get_access_policy()
    if policy.can_send(request.user, channel):
        return None
    if (
        create
        and not Channel.objects.filter(name=channel).exists()
        and policy.can_create(request.user, channel)
    ):
        return None
    if not request.user.is_authenticated:
        return error(401, "unauthenticated", "Log in to send to this channel.")
    return error(403, "forbidden", "You may not send to this channel.")


def json_body(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object body; raises FrameError (code, message) when it is not one."""
    limit = get_config()["MAX_CLIENT_FRAME_BYTES"]
    if len(request.body) > limit:
        raise FrameError("too_large", f"The body may be at most {limit} bytes.")
    try:
        body = json.loads(request.body or b"null")
    except (ValueError, RecursionError):
        raise FrameError("invalid_json", "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise FrameError("invalid_body", "The body must be a JSON object.")
    return body


def unavailable() -> JsonResponse:
    """503 ``unavailable`` with ``Retry-After``: the database is away for the moment."""
    response = error(503, "unavailable", "The server cannot reach its database; try again shortly.")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def unavailable_on_database_errors(view: V) -> V:
    """Answer a lost database connection with :func:`unavailable`, not a 500 HTML page.

    The session and the user are loaded lazily, inside the view, so this covers them too.
    """
    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def guarded_async(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            try:
                return await view(request, *args, **kwargs)
            except TRANSIENT_ERRORS as exc:
                logger.warning("agent_channels: %s answered 503: %s", request.path, exc)
                return unavailable()

        return guarded_async  # type: ignore[return-value]

    @functools.wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        try:
            return view(request, *args, **kwargs)
        except TRANSIENT_ERRORS as exc:
            logger.warning("agent_channels: %s answered 503: %s", request.path, exc)
            return unavailable()

    return guarded  # type: ignore[return-value]
