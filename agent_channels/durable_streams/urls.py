"""``path("streams/", include("agent_channels.durable_streams.urls"))``.

``channels/<channel name>`` is an agent channel (read-only); every other path is a stream.
"""

from django.urls import re_path

from agent_channels.durable_streams import views

app_name = "durable_streams"

urlpatterns = [
    re_path(r"^channels/(?P<channel>[\s\S]+)$", views.channel_stream, name="channel"),
    re_path(r"^(?P<path>[\s\S]+)$", views.stream, name="stream"),
]
