"""The admin: the log stays a record; runs can be cancelled, interrupted, retried and answered.

Nothing here edits a row by hand. Control goes through
:func:`agent_channels.channel.control.send_control`, the same path as a WebSocket frame,
so it is persisted in the channel's log with the user who sent it before any worker
sees it; a retry is a new run from :func:`agent_channels.runtime.start_run`.

Permissions: cancel, interrupt and input need ``agent_channels.change_run``; retry
needs ``agent_channels.add_run``. The forms stay read-only either way.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Max, Min, Q, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from agent_channels.channel.control import send_control
from agent_channels.models import Channel, Event, Run
from agent_channels.runtime.api import start_run
from agent_channels.runtime.errors import RunError
from agent_channels.runtime.pricing import estimated_cost as run_cost
from agent_channels.runtime.registry import agent_names

RECENT_EVENTS = 50
#: What an operator may send to a run from the admin (``supersede`` is the runtime's own).
ADMIN_CONTROL_KINDS = ("cancel", "interrupt", "input")


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
    list_display = ["name", "owner", "runs_link", "events_link", "last_seq", "last_event_at"]
    search_fields = ["name", "owner__username"]
    list_select_related = ["owner"]
    show_full_result_count = False
    readonly_fields = [
        "name",
        "owner",
        "last_seq",
        "pruned_seq",
        "created_at",
        "last_event_at",
        "recent_events",
    ]

    @admin.display(description="Runs")
    def runs_link(self, obj: Channel) -> str:
        url = reverse("admin:agent_channels_run_changelist")
        return format_html('<a href="{}?channel={}">runs</a>', url, obj.pk)

    @admin.display(description="Events")
    def events_link(self, obj: Channel) -> str:
        url = reverse("admin:agent_channels_event_changelist")
        return format_html('<a href="{}?channel={}">events</a>', url, obj.pk)

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


def _parse_input(text: str, as_json: bool) -> Any:
    """The input an operator typed: JSON when asked for (ValueError if it is not), else text."""
    if not as_json:
        return text
    return json.loads(text)


#: Raw events per page of a run's history (a page is compacted on its own).
HISTORY_PAGE_SIZE = 500


@dataclass
class HistoryEntry:
    """One line of a run's compacted history, rendered by the run's change form.

    Every field is plain text or a JSON dump; the template's autoescaping makes model
    output, tool results and user input inert.
    """

    kind: str  # message, tool, input, control, lifecycle, event
    seq: int
    title: str
    text: str = ""
    detail: str = ""
    result: str = ""
    status: str = ""
    user: str = ""
    last_seq: int = 0


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1, default=str)


def compact_history(events: Iterable[Event], usernames: dict[Any, str]) -> list[HistoryEntry]:
    """A run's events as an operator reads them: one entry per message and per tool call.

    ``message.delta`` events are joined into their message (the closing
    ``message.completed``/``message.aborted`` has the full text and the outcome);
    ``tool.started`` and ``tool.completed`` share an entry; client events say who sent them.
    """
    entries: list[HistoryEntry] = []
    messages_by_id: dict[str, HistoryEntry] = {}
    tools: dict[str, HistoryEntry] = {}
    for event in events:
        data = event.data if isinstance(event.data, dict) else {"value": event.data}
        name = event.name
        if name.startswith("message."):
            message_id = str(data.get("message_id", ""))
            entry = messages_by_id.get(message_id)
            if entry is None:
                entry = HistoryEntry("message", event.seq, "Message", status="streaming")
                messages_by_id[message_id] = entry
                entries.append(entry)
            entry.last_seq = event.seq
            text = str(data.get("text", ""))
            if name == "message.delta":
                entry.text += text
            else:
                # The closing event carries the whole text: it wins over the deltas seen
                # (which may have started on an earlier page).
                entry.text = text or entry.text
                entry.status = (
                    "completed"
                    if name == "message.completed"
                    else f"aborted: {data.get('reason', '')}".rstrip(": ")
                )
        elif name in ("tool.started", "tool.completed"):
            call_id = str(data.get("call_id") or f"seq-{event.seq}")
            entry = tools.get(call_id) if name == "tool.completed" else None
            if entry is None:
                entry = HistoryEntry(
                    "tool",
                    event.seq,
                    f"Tool {data.get('name', '')}",
                    detail=str(data.get("arguments", "")),
                    status="running",
                )
                tools[call_id] = entry
                entries.append(entry)
            entry.last_seq = event.seq
            if name == "tool.completed":
                entry.result = _dump(data.get("result"))
                entry.status = "ok" if data.get("ok") else "error"
        elif name.startswith("client.") or name == "control.supersede":
            kind = name.split(".", 1)[1]
            user_id = data.get("user")
            entries.append(
                HistoryEntry(
                    "input" if kind == "input" else "control",
                    event.seq,
                    kind.capitalize(),
                    detail="" if data.get("data") is None else _dump(data.get("data")),
                    user=usernames.get(user_id, "" if user_id is None else f"user #{user_id}"),
                )
            )
        elif name in ("input.requested", "input.received"):
            entries.append(
                HistoryEntry(
                    "input",
                    event.seq,
                    "Input requested" if name == "input.requested" else "Input received",
                    detail=_dump(
                        data.get("prompt") if name == "input.requested" else data.get("value")
                    ),
                )
            )
        elif name.startswith("run."):
            entries.append(HistoryEntry("lifecycle", event.seq, name, detail=_dump(data)))
        else:
            entries.append(HistoryEntry("event", event.seq, name, detail=_dump(data)))
    return entries


class AgentFilter(admin.SimpleListFilter):
    """Agents from the registry, not ``SELECT DISTINCT agent`` over every run on every page."""

    title = "agent"
    parameter_name = "agent"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in agent_names()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(agent=value) if value else queryset


def _admin_link(obj: Any, text: Any) -> str:
    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    # Channel names, agent names and usernames come from users: escaped by format_html.
    return format_html('<a href="{}">{}</a>', url, text)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    change_form_template = "admin/agent_channels/run/change_form.html"
    list_display = [
        "id",
        "channel_link",
        "agent",
        "status",
        "owner",
        "started_at",
        "duration",
        "total_tokens",
        "estimated_cost",
        "attempts",
    ]
    list_filter = ["status", AgentFilter, ("created_at", admin.DateFieldListFilter)]
    # A run id is matched exactly (see get_search_results), so it is not listed here.
    search_fields = ["channel__name", "created_by__username"]
    ordering = ["-created_at"]
    # One query for the page, not one per row for the channel and the owner.
    list_select_related = ["channel", "created_by"]
    # Django counts the whole table for "N total" on every page otherwise; the filtered
    # count that pagination needs stays.
    show_full_result_count = False
    list_per_page = 100
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
    actions = ["cancel_runs", "interrupt_runs", "retry_runs"]

    # -- permissions ------------------------------------------------------------------
    # Named has_<name>_permission so bulk actions can declare permissions=["control"].

    def has_control_permission(self, request: HttpRequest) -> bool:
        """Cancel, interrupt, input: changing what a run does is changing the run."""
        return request.user.has_perm("agent_channels.change_run")

    def has_retry_permission(self, request: HttpRequest) -> bool:
        """Retry starts a new run: adding one."""
        return request.user.has_perm("agent_channels.add_run")

    # -- columns ----------------------------------------------------------------------

    @admin.display(description="Channel", ordering="channel__name")
    def channel_link(self, obj: Run) -> str:
        return _admin_link(obj.channel, obj.channel.name)

    @admin.display(description="Owner", ordering="created_by__username")
    def owner(self, obj: Run) -> str:
        return "–" if obj.created_by is None else obj.created_by.get_username()

    @admin.display(description="Duration")
    def duration(self, obj: Run) -> str:
        if obj.started_at is None:
            return "–"
        end = obj.finished_at or timezone.now()
        return _duration((end - obj.started_at).total_seconds())

    @admin.display(description="Tokens")
    def total_tokens(self, obj: Run) -> int:
        return obj.prompt_tokens + obj.completion_tokens

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Run], search_term: str
    ) -> tuple[QuerySet[Run], bool]:
        # A pasted run id finds that run by primary key; icontains over a UUID column
        # would scan the table (and cast it to text on PostgreSQL).
        try:
            run_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(pk=run_id), False

    @admin.display(description="Est. cost (USD)")
    def estimated_cost(self, obj: Run) -> str:
        cost = run_cost(obj)
        return "–" if cost is None else f"{cost:.4f}"

    # -- control: the one path ----------------------------------------------------------

    def _control(self, request: HttpRequest, runs: Iterable[Run], kind: str, data: Any) -> int:
        """Send ``kind`` once per channel of the active ``runs``; returns how many were sent.

        Control is addressed to a channel (whatever runs there hears it, exactly as
        with a WebSocket frame), so two selected runs of one channel get one message.
        """
        sent: set[int] = set()
        for run in runs:
            if not run.is_active or run.channel_id in sent:
                continue
            send_control(run.channel.name, kind, data, user=request.user, run=run.pk)
            sent.add(run.channel_id)
        return len(sent)

    def _retry(self, request: HttpRequest, run: Run) -> Run | None:
        try:
            return start_run(run.channel.name, run.agent, run.input, user=request.user)
        except RunError as exc:
            # RunConflict (another run still active under the "reject" policy), an agent
            # no longer registered, ...: say so instead of a 500.
            self.message_user(request, f"Run {run.pk} was not retried: {exc}", messages.ERROR)
            return None

    @admin.action(description="Cancel selected runs", permissions=["control"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        count = self._control(request, queryset.select_related("channel"), "cancel", None)
        self._report(request, count, "cancel", queryset)

    @admin.action(description="Interrupt selected runs", permissions=["control"])
    def interrupt_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        count = self._control(request, queryset.select_related("channel"), "interrupt", None)
        self._report(request, count, "interrupt", queryset)

    @admin.action(description="Retry selected runs (new runs, same input)", permissions=["retry"])
    def retry_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        started = sum(
            self._retry(request, run) is not None for run in queryset.select_related("channel")
        )
        if started:
            self.message_user(request, f"Started {started} new run(s).", messages.SUCCESS)

    def _report(self, request: HttpRequest, count: int, kind: str, queryset: QuerySet[Run]) -> None:
        if count:
            self.message_user(request, f"Sent {kind} to {count} channel(s).", messages.SUCCESS)
        else:
            self.message_user(
                request, f"No {kind} sent: none of the selected runs is active.", messages.WARNING
            )

    # -- the change page's buttons --------------------------------------------------------

    def _history_context(self, request: HttpRequest, run: Run) -> dict[str, Any]:
        """The page of the run's history asked for by ``?history=<n>``, and its steps."""
        # Control frames from WebSocket clients carry no run, so the run's history is its
        # own events plus the run-less ones of its channel between its first and last.
        bounds = Event.objects.filter(run=run).aggregate(first=Min("seq"), last=Max("seq"))
        if bounds["first"] is None:
            events = Event.objects.none()
        else:
            events = Event.objects.filter(
                Q(run=run) | Q(run__isnull=True),
                channel_id=run.channel_id,
                seq__gte=bounds["first"],
                seq__lte=bounds["last"],
            ).order_by("seq")
        page = Paginator(events, HISTORY_PAGE_SIZE).get_page(request.GET.get("history"))
        rows = list(page.object_list)
        user_ids: set[int | str] = set()
        for event in rows:
            if event.name.startswith("client.") and isinstance(event.data, dict):
                user_id = event.data.get("user")
                if isinstance(user_id, int | str):
                    user_ids.add(user_id)
        user_model = get_user_model()
        usernames = {
            user.pk: user.get_username()
            for user in user_model._default_manager.filter(pk__in=user_ids)
        }
        return {
            "history": compact_history(rows, usernames),
            "history_page": page,
            "steps": list(run.steps.order_by("index")),
        }

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        own = [
            path(
                "<path:object_id>/control/",
                self.admin_site.admin_view(self.control_view),
                name="{}_{}_control".format(*info),
            ),
            path(
                "<path:object_id>/retry/",
                self.admin_site.admin_view(self.retry_view),
                name="{}_{}_retry".format(*info),
            ),
        ]
        # Before the defaults: their "<path:object_id>/" catch-all would take these.
        return own + super().get_urls()

    def _get_run(self, request: HttpRequest, object_id: str) -> Run:
        run = self.get_object(request, unquote(object_id))
        if run is None or not self.has_view_permission(request, run):
            raise Http404("No such run.")
        return run  # type: ignore[no-any-return]

    def _change_url(self, run: Run) -> str:
        return reverse(f"{self.admin_site.name}:agent_channels_run_change", args=[run.pk])

    def control_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST ``kind`` (cancel, interrupt, input) and for input ``input`` and ``json``."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        run = self._get_run(request, object_id)
        if not self.has_control_permission(request):
            raise PermissionDenied
        kind = request.POST.get("kind", "")
        if kind not in ADMIN_CONTROL_KINDS:
            self.message_user(request, f"Unknown action {kind!r}.", messages.ERROR)
            return HttpResponseRedirect(self._change_url(run))
        data: Any = None
        if kind == "input":
            try:
                data = _parse_input(request.POST.get("input", ""), bool(request.POST.get("json")))
            except ValueError as exc:
                self.message_user(request, f"The input is not JSON: {exc}", messages.ERROR)
                return HttpResponseRedirect(self._change_url(run))
        if self._control(request, [run], kind, data):
            self.message_user(request, f"Sent {kind} to {run.channel.name}.", messages.SUCCESS)
        else:
            self.message_user(request, f"Nothing sent: the run is {run.status}.", messages.WARNING)
        return HttpResponseRedirect(self._change_url(run))

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: a new run of the same agent with the same input, then its page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        run = self._get_run(request, object_id)
        if not self.has_retry_permission(request):
            raise PermissionDenied
        new = self._retry(request, run)
        if new is None:
            return HttpResponseRedirect(self._change_url(run))
        self.message_user(request, f"Started run {new.pk}.", messages.SUCCESS)
        return HttpResponseRedirect(self._change_url(new))

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        context = {
            **(extra_context or {}),
            "can_control": self.has_control_permission(request),
            "can_retry": self.has_retry_permission(request),
        }
        run = self.get_object(request, unquote(object_id))
        if run is not None:
            context.update(self._history_context(request, run))
        return super().change_view(request, object_id, form_url, context)


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ["channel", "seq", "name", "run_link", "created_at", "data_preview"]
    list_filter = ["name"]
    search_fields = ["channel__name"]
    list_select_related = ["channel", "run"]
    show_full_result_count = False

    @admin.display(description="Run")
    def run_link(self, obj: Event) -> str:
        return "–" if obj.run is None else _admin_link(obj.run, obj.run.agent)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The log is a record: events go with their channel or by retention, never one by one.
        return False

    @admin.display(description="Data")
    def data_preview(self, obj: Event) -> str:
        return format_html("<code>{}</code>", _preview(obj.data, 120))
