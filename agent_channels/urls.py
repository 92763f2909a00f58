"""HTTP routes: ``path("agent-channels/", include("agent_channels.urls"))``."""

from django.urls import re_path

from agent_channels import views

app_name = "agent_channels"

urlpatterns = [
    re_path(r"^(?P<channel>[\s\S]+)/events/$", views.events, name="events"),
]
