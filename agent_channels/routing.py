"""WebSocket routes: add ``websocket_urlpatterns`` to your ASGI URLRouter."""

from django.urls import re_path

from agent_channels.ws.consumer import ChannelConsumer

__all__ = ["websocket_urlpatterns"]

websocket_urlpatterns = [
    # The name is URL-encoded by clients; servers decode the path, so it may hold "/" (and
    # a newline, which must reach the consumer to be refused with a reason, not a 404).
    re_path(r"^ws/agent-channels/(?P<channel>[\s\S]+)/$", ChannelConsumer.as_asgi()),
]
