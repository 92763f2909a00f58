"""The example app: a list of channels, a chat-style channel page, a form that starts runs.

The channel page is built only from the template tags ({% agent_channel %}); no page here
writes to the database on GET.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

from agent_channels.access import get_access_policy, new_channel_name
from agent_channels.channel.names import InvalidChannelName, validate_name
from agent_channels.models import Channel, Run
from agent_channels.runtime import start_run
from agent_channels.runtime.errors import RunConflict, RunError, UnknownAgent
from agent_channels.runtime.registry import agent_names

#: Inputs the form suggests per agent (any JSON, or plain text, is accepted).
EXAMPLE_INPUTS = {
    "demo": '{"tokens": 300, "interval_ms": 20}',
    "approval": '{"action": "deploy the release"}',
    "chat": '{"prompt": "What is 17 * 23? Use the calculator."}',
}


def _channels_for(user: Any) -> QuerySet[Channel]:
    if not user.is_authenticated:
        return Channel.objects.none()
    channels = Channel.objects.all()
    if not user.has_perm("agent_channels.view_all_channels"):
        channels = channels.filter(owner=user)
    latest = Run.objects.filter(channel=OuterRef("pk")).order_by("-created_at")
    return channels.annotate(
        run_status=Subquery(latest.values("status")[:1]),
        run_agent=Subquery(latest.values("agent")[:1]),
    )


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "demo/index.html", {"channels": _channels_for(request.user)[:50]})


@login_required
def new_channel(request: HttpRequest) -> HttpResponse:
    # Only a name, and one nobody else can guess or claim (it is in the user's namespace):
    # the channel exists once its first run starts. GET creates nothing.
    return redirect("channel", channel=new_channel_name(request.user, "demo-"))


def _agents() -> list[dict[str, str]]:
    # The agents with an example input first: "demo" needs nothing else to run.
    names = sorted(agent_names(), key=lambda name: (name not in EXAMPLE_INPUTS, name != "demo"))
    return [{"name": name, "example": EXAMPLE_INPUTS.get(name, "")} for name in names]


@login_required
@ensure_csrf_cookie
def channel_page(request: HttpRequest, channel: str) -> HttpResponse:
    """GET: the channel (never created here). POST: start a run from the form."""
    if request.method == "POST":
        return start(request, channel)
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD, POST"})
    try:
        name = validate_name(channel)
    except InvalidChannelName as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain")
    policy = get_access_policy()
    exists = Channel.objects.filter(name=name).exists()
    if not (policy.can_read(request.user, name) if exists
            else policy.can_create(request.user, name)):
        # One answer for another user's channel and a name the user may not create, so the
        # page tells nobody which names exist.
        return HttpResponse("No such channel.", status=404, content_type="text/plain")
    can_start = policy.can_send(request.user, name) or not exists
    return render(request, "demo/channel.html", {
        "channel": name,
        "exists": exists,
        "can_start": can_start,
        "agents": _agents(),
    })


def _parse_input(text: str) -> Any:
    """JSON when it parses, else the text itself (agents such as ``chat`` take a string)."""
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def start(request: HttpRequest, channel: str) -> HttpResponse:
    """The form's target (the channel URL itself): works without JavaScript, then the page
    follows the run."""
    try:
        name = validate_name(channel)
    except InvalidChannelName as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain")
    policy = get_access_policy()
    exists = Channel.objects.filter(name=name).exists()
    allowed = policy.can_send(request.user, name) or (
        not exists and policy.can_create(request.user, name)
    )
    if not allowed:
        return HttpResponse("No such channel.", status=404, content_type="text/plain")
    agent = request.POST.get("agent", "")
    try:
        start_run(name, agent, _parse_input(request.POST.get("input", "")), user=request.user,
                  on_active=request.POST.get("on_active") or None)
    except UnknownAgent:
        messages.error(request, f"There is no agent named {agent!r}.")
    except RunConflict:
        messages.error(request, "A run is still active here: cancel it, or choose to queue "
                                "or interrupt.")
    except RunError as exc:
        messages.error(request, str(exc))
    return redirect("channel", channel=name)
