"""WebSocket routes: add ``websocket_urlpatterns`` to your ASGI URLRouter.

Wrap the stack in :class:`UnavailableMiddleware` so that a handshake during a database
outage gets an ``unavailable`` error frame instead of HTTP 500.
"""

from django.urls import re_path

from agent_channels.ws.consumer import ChannelConsumer
from agent_channels.ws.guard import UnavailableMiddleware

__all__ = ["UnavailableMiddleware", "websocket_urlpatterns"]

websocket_urlpatterns = [
    # The name is URL-encoded by clients; servers decode the path, so it may hold "/" (and
    # a newline, which must reach the consumer to be refused with a reason, not a 404).
    re_path(r"^ws/agent-channels/(?P<channel>[\s\S]+)/$", ChannelConsumer.as_asgi()),
]
