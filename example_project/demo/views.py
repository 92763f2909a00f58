from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from agent_channels.models import Channel


def index(request: HttpRequest) -> HttpResponse:
    channels = Channel.objects.all()[:20] if request.user.is_staff else Channel.objects.none()
    return render(request, "demo/index.html", {"channels": channels})
