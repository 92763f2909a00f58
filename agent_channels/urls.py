"""HTTP routes: ``path("agent-channels/", include("agent_channels.urls"))``.

Channel names may contain ``/``, so the fixed suffixes are matched from the end and the
run routes come before anything that could swallow them.
"""

from django.urls import re_path

from agent_channels.views import messages, runs, sse
from agent_channels.views.http import unavailable_on_database_errors as guard

app_name = "agent_channels"

urlpatterns = [
    re_path(r"^(?P<channel>[\s\S]+)/runs/$", guard(runs.create_run), name="runs"),
    re_path(
        r"^(?P<channel>[\s\S]+)/runs/(?P<run>[0-9a-fA-F-]{32,36})/$",
        guard(runs.run_detail),
        name="run",
    ),
    re_path(r"^(?P<channel>[\s\S]+)/messages/$", guard(messages.post_message), name="messages"),
    re_path(r"^(?P<channel>[\s\S]+)/events/$", guard(sse.events), name="events"),
]
