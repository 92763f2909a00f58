"""tests.asgi with the HTTP side wrapped in expose_transport, as docs/templatetags.rst shows."""

from tests.asgi import application  # noqa: I001 - first: it sets Django up

from agent_channels.views.sse import expose_transport

application.application_mapping["http"] = expose_transport(application.application_mapping["http"])
