"""ASGI entry point: HTTP through Django, WebSockets through agent_channels' routes."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from agent_channels.routing import UnavailableMiddleware, websocket_urlpatterns  # noqa: E402
from agent_channels.views.sse import expose_transport  # noqa: E402

application = ProtocolTypeRouter(
    {
        # expose_transport: event streams (SSE) pause for a slow reader instead of letting
        # daphne buffer without bound.
        "http": expose_transport(django_asgi_app),
        # Origin checks happen in the consumer (against ALLOWED_HOSTS), so no wrapper here.
        "websocket": UnavailableMiddleware(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
