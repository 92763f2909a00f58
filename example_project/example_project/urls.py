from demo import views
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", views.index, name="index"),
    path("new/", views.new_channel, name="new_channel"),
    path("c/<path:channel>/", views.channel_page, name="channel"),
    path("admin/", admin.site.urls),
    path("agent-channels/", include("agent_channels.urls")),
    # Durable Streams: any stream client; agent channels read-only under streams/channels/.
    path("streams/", include("agent_channels.durable_streams.urls")),
    # AG-UI: POST a RunAgentInput to ag-ui/<agent>/ (needs the agui extra).
    path("ag-ui/", include("agent_channels.agui.urls")),
]
