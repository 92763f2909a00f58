"""A read-only admin over the log: the data is a record, not something to edit by hand."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from agent_channels.models import Channel, Event, Run
from agent_channels.runtime.pricing import estimated_cost as run_cost

RECENT_EVENTS = 50


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _preview(data: Any, limit: int = 200) -> str:
    text = json.dumps(data, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@admin.register(Channel)
class ChannelAdmin(ReadOnlyAdmin):
    list_display = ["name", "owner", "last_seq", "pruned_seq", "last_event_at"]
    search_fields = ["name"]
    readonly_fields = [
        "name",
        "owner",
        "last_seq",
        "pruned_seq",
        "created_at",
        "last_event_at",
        "recent_events",
    ]

    @admin.display(description="Recent events")
    def recent_events(self, obj: Channel) -> str:
        events = list(obj.events.order_by("-seq")[:RECENT_EVENTS])[::-1]
        if not events:
            return "—"
        # Model output is untrusted: every value goes through format_html's escaping.
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            (
                (e.seq, e.created_at.isoformat(timespec="milliseconds"), e.name, _preview(e.data))
                for e in events
            ),
        )
        return format_html(
            "<table><tr><th>seq</th><th>time</th><th>event</th><th>data</th></tr>{}</table>", rows
        )


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "agent",
        "channel",
        "status",
        "total_tokens",
        "estimated_cost",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "agent"]
    search_fields = ["id", "channel__name", "agent"]
    readonly_fields = [
        "id",
        "channel",
        "agent",
        "status",
        "input",
        "output",
        "error",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "estimated_cost",
        "attempts",
        "worker",
        "heartbeat_at",
    ]

    @admin.display(description="Tokens")
    def total_tokens(self, obj: Run) -> int:
        return obj.prompt_tokens + obj.completion_tokens

    @admin.display(description="Est. cost (USD)")
    def estimated_cost(self, obj: Run) -> str:
        cost = run_cost(obj)
        return "–" if cost is None else f"{cost:.4f}"


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ["channel", "seq", "name", "run", "created_at", "data_preview"]
    list_filter = ["name"]
    search_fields = ["channel__name"]
    list_select_related = ["channel"]

    @admin.display(description="Data")
    def data_preview(self, obj: Event) -> str:
        return format_html("<code>{}</code>", _preview(obj.data, 120))
