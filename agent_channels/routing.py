"""WebSocket routes: add ``websocket_urlpatterns`` to your ASGI URLRouter."""

from django.urls import re_path

from agent_channels.consumers import ChannelConsumer

__all__ = ["websocket_urlpatterns"]

websocket_urlpatterns = [
    # The name is URL-encoded by clients; servers decode the path, so it may hold "/".
    re_path(r"^ws/agent-channels/(?P<channel>.+)/$", ChannelConsumer.as_asgi()),
]
