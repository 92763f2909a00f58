"""``POST <channel>/runs/`` starts a run; ``GET <channel>/runs/<id>/`` reads one.

JSON APIs for session users, so CSRF protection stays on: send the ``csrftoken``
cookie's value in the ``X-CSRFToken`` header, as Django's docs describe for AJAX. A
view that skipped it would let any page a logged-in user visits start runs (and spend
model tokens) in their name.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from agent_channels.access import get_access_policy
from agent_channels.channel.names import InvalidChannelName, validate_name
from agent_channels.models import Run
from agent_channels.runtime.api import POLICIES, start_run
from agent_channels.runtime.errors import (
    AgentForbidden,
    QuotaExceeded,
    RunConflict,
    RunError,
    RunForbidden,
    UnknownAgent,
)
from agent_channels.runtime.lifecycle import queue_position
from agent_channels.views.http import check_read, check_send, error, json_body
from agent_channels.views.throttle import throttle
from agent_channels.ws.frames import FrameError

__all__ = ["create_run", "run_detail", "run_json"]


def run_json(run: Run) -> dict[str, Any]:
    return {
        "id": str(run.pk),
        "agent": run.agent,
        "status": run.status,
        "output": run.output,
        "error": run.error,
        "usage": run.usage,
        "model": run.model,
        "attempts": run.attempts,
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        # While queued: {"reason": "channel_busy" | "waiting_for_worker", "ahead": n}.
        "queue": queue_position(run),
    }


@require_POST
def create_run(request: HttpRequest, channel: str) -> JsonResponse:
    """``POST <channel>/runs/`` with ``{"agent", "input", "on_active"?}`` → 201 ``{id, status}``."""
    try:
        name = validate_name(channel)
    except InvalidChannelName as exc:
        return error(400, "invalid_channel", str(exc))
    # Before the access check, so a throttled answer says nothing about the name either.
    denied = throttle(request, "runs") or check_send(request, name, create=True)
    if denied is not None:
        return denied
    try:
        body = json_body(request)
    except FrameError as exc:
        return error(400, exc.code, exc.message)
    agent = body.get("agent")
    if not isinstance(agent, str) or not agent:
        return error(400, "invalid_body", "'agent' must be the name of an agent.")
    on_active = body.get("on_active")
    if on_active is not None and on_active not in POLICIES:
        return error(400, "invalid_body", f"'on_active' must be one of {', '.join(POLICIES)}.")
    user = request.user if request.user.is_authenticated else None
    if user is None and not get_access_policy().can_run(request.user, name, agent):
        # start_run asks can_run itself when it is given a user; anonymous users (under a
        # policy that lets them send) are asked here.
        return _agent_forbidden(agent)
    try:
        run = start_run(name, agent, body.get("input"), user=user, on_active=on_active)
    except UnknownAgent as exc:
        return error(400, "unknown_agent", str(exc))
    except AgentForbidden:
        return _agent_forbidden(agent)
    except QuotaExceeded as exc:
        return error(429, exc.code, str(exc))
    except RunForbidden:
        # The same answer as check_send's: nothing tells an existing channel from a refused name.
        return error(403, "forbidden", "You may not send to this channel.")
    except RunConflict as exc:
        return error(409, "run_active", str(exc), run=str(exc.active_run_id))
    except RunError as exc:
        return error(400, "invalid_run", str(exc))
    return JsonResponse({"id": str(run.pk), "status": run.status}, status=201)


def _agent_forbidden(agent: str) -> JsonResponse:
    return error(403, "agent_forbidden", f"You may not run the agent {agent!r} here.")


@require_GET
def run_detail(request: HttpRequest, channel: str, run: str) -> JsonResponse:
    """``GET <channel>/runs/<run>/``: the run's status, output and usage."""
    try:
        name = validate_name(channel)
    except InvalidChannelName as exc:
        return error(400, "invalid_channel", str(exc))
    denied = check_read(request, name)
    if denied is not None:
        return denied
    try:
        run_id = uuid.UUID(run)
    except ValueError:
        return error(404, "not_found", "No such run on this channel.")
    found = Run.objects.filter(pk=run_id, channel__name=name).first()
    if found is None:
        return error(404, "not_found", "No such run on this channel.")
    return JsonResponse(run_json(found))
