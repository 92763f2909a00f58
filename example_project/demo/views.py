import uuid

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie

from agent_channels.access import get_access_policy
from agent_channels.channel.names import InvalidChannelName, validate_name
from agent_channels.models import Channel


def index(request: HttpRequest) -> HttpResponse:
    channels = Channel.objects.none()
    if request.user.is_authenticated:
        channels = Channel.objects.all()
        if not request.user.is_staff:
            channels = channels.filter(owner=request.user)
    return render(request, "demo/index.html", {"channels": channels[:20]})


@login_required
def new_channel(request: HttpRequest) -> HttpResponse:
    return redirect("channel", channel=f"demo-{uuid.uuid4().hex[:8]}")


@login_required
@ensure_csrf_cookie
def channel_page(request: HttpRequest, channel: str) -> HttpResponse:
    try:
        name = validate_name(channel)
    except InvalidChannelName as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain")
    policy = get_access_policy()
    if not Channel.objects.filter(name=name).exists() and policy.can_create(request.user, name):
        # Opening a new channel makes the user its owner, so the socket may follow it.
        Channel.objects.get_or_create(name=name, defaults={"owner": request.user})
    if not policy.can_read(request.user, name):
        return HttpResponse("You may not follow this channel.", status=403,
                            content_type="text/plain")
    return render(request, "demo/channel.html", {"channel": name})
