"""HTTP routes: ``path("agent-channels/", include("agent_channels.urls"))``.

Channel names may contain ``/``, so the fixed suffixes are matched from the end and the
run routes come before anything that could swallow them.
"""

from django.urls import re_path

from agent_channels import run_views, views

app_name = "agent_channels"

urlpatterns = [
    re_path(r"^(?P<channel>[\s\S]+)/runs/$", run_views.create_run, name="runs"),
    re_path(
        r"^(?P<channel>[\s\S]+)/runs/(?P<run>[0-9a-fA-F-]{32,36})/$",
        run_views.run_detail,
        name="run",
    ),
    re_path(r"^(?P<channel>[\s\S]+)/messages/$", run_views.post_message, name="messages"),
    re_path(r"^(?P<channel>[\s\S]+)/events/$", views.events, name="events"),
]
