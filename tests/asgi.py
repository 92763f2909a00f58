import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from agent_channels.routing import UnavailableMiddleware, websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Static files too: the browser tests load the example pages' script from here.
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": UnavailableMiddleware(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
