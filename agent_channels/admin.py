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
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from agent_channels.access import get_access_policy
from agent_channels.channel.control import send_control
from agent_channels.channel.presence import watcher_counts, watchers
from agent_channels.channel.state import Item, Message, StatusLine, compact
from agent_channels.models import Channel, Event, Run, Step
from agent_channels.runtime.api import start_run
from agent_channels.runtime.errors import RunError
from agent_channels.runtime.pricing import UsageTotals, usage_totals
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
    list_display = [
        "name",
        "owner",
        "runs_link",
        "events_link",
        "last_seq",
        "last_event_at",
        "watchers_now",
    ]
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
        "watchers_now",
        "recent_events",
    ]

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        return _with_watchers(super().get_changelist_instance(request), "pk")

    @admin.display(description="Watchers now")
    def watchers_now(self, obj: Channel) -> str:
        return _watchers_of(obj, obj)

    # -- deleting: the log goes with its channel -------------------------------------------

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        """What the delete confirmation lists: the channels and how much of their log goes.

        Django's default walks every related row into the page (and refuses because events
        may not be deleted one by one); a channel's log is counted instead, with one
        ``COUNT`` per table, and deleting it needs only ``delete_channel``.
        """
        channels = list(objs)
        ids = [channel.pk for channel in channels]
        events = Event.objects.filter(channel_id__in=ids).count()
        runs = Run.objects.filter(channel_id__in=ids).count()
        steps = Step.objects.filter(run__channel_id__in=ids).count()
        listed: list[Any] = []
        for channel in channels:
            listed.append(format_html("Channel: {}", _admin_link(channel, channel.name)))
        listed.append(
            [
                f"{events} event{'s' * (events != 1)} of their log",
                f"{runs} run{'s' * (runs != 1)} and their {steps} journal step{'s' * (steps != 1)}",
            ]
        )
        counts = {"channels": len(channels), "runs": runs, "events": events, "steps": steps}
        perms_needed = set() if self.has_delete_permission(request) else {"channel"}
        return listed, counts, perms_needed, []

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


def _with_watchers(changelist: Any, channel_attr: str) -> Any:
    """Look up the watchers of every channel on the page in one query, before rendering.

    Evaluating ``result_list`` here fills its cache, so the template iterates the same rows.
    """
    rows = list(changelist.result_list)
    counts = watcher_counts({getattr(row, channel_attr) for row in rows})
    for row in rows:
        row._agch_watchers = counts.get(getattr(row, channel_attr), 0)
    return changelist


def _watchers_of(obj: Any, channel: Channel) -> str:
    """The count a list looked up for its page, or on a change form who watches."""
    cached = getattr(obj, "_agch_watchers", None)
    if cached is not None:
        return str(cached)
    now = watchers(channel.name)
    return f"{now.count} ({', '.join(now.users)})" if now.users else str(now.count)


def _parse_input(text: str, as_json: bool) -> Any:
    """The input an operator typed: JSON when asked for (ValueError if it is not), else text."""
    if not as_json:
        return text
    return json.loads(text)


#: Raw events per page of a run's history (a page is compacted on its own).
HISTORY_PAGE_SIZE = 500
#: Items the live view of an active run renders before the client takes over.
LIVE_ITEMS = 200


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


class TotalsPaginator(Paginator):  # type: ignore[type-arg]
    """Counts the filtered runs with the query that sums their usage: one aggregate for both.

    The run list needs the count for its pages and the totals for its footer; both come
    from one ``GROUP BY model`` over the filtered runs instead of a ``COUNT(*)`` and a sum.
    """

    totals: UsageTotals | None = None

    @cached_property
    def count(self) -> int:
        self.totals = usage_totals(self.object_list)  # type: ignore[arg-type]
        return self.totals.runs


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    change_form_template = "admin/agent_channels/run/change_form.html"
    change_list_template = "admin/agent_channels/run/change_list.html"
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
        "watchers_now",
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
        "watchers_now",
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

    @admin.display(description="Watchers now")
    def watchers_now(self, obj: Run) -> str:
        return _watchers_of(obj, obj.channel)

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        return _with_watchers(super().get_changelist_instance(request), "channel_id")

    #: Totals of the filtered runs above the list. They replace the page count's
    #: ``COUNT(*)`` with one ``GROUP BY model`` aggregate (about 3x its cost: 36 ms over
    #: 100,000 runs on PostgreSQL, benchmarks/bench_admin.py); False in a subclass drops them.
    show_totals = True

    def get_paginator(self, request: HttpRequest, queryset: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.show_totals:
            return super().get_paginator(request, queryset, *args, **kwargs)
        return TotalsPaginator(queryset, *args, **kwargs)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if self.show_totals and context and "cl" in context:
            paginator = context["cl"].paginator
            totals = (
                paginator.totals
                if isinstance(paginator, TotalsPaginator) and paginator.totals is not None
                else usage_totals(context["cl"].queryset)
            )
            context["run_totals"] = totals
            # Rounded as the cost column rounds each run.
            context["run_totals_cost"] = f"{totals.cost:.4f}"
        return response

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
        """The live view of an active run, or the page of its history ``?history=<n>`` asks for."""
        # Control frames from WebSocket clients carry no run, so the run's history is its
        # own events plus the run-less ones of its channel between its first and last.
        bounds = Event.objects.filter(run=run).aggregate(first=Min("seq"), last=Max("seq"))
        context: dict[str, Any] = {"steps": list(run.steps.order_by("index"))}
        if run.is_active and get_access_policy().can_read(request.user, run.channel.name):
            # The client follows the channel from the run's first event on; the page
            # fetches itself again once the run is over and shows the history below.
            first = bounds["first"]
            context["live_since"] = run.channel.last_seq if first is None else first - 1
            context["live_items"] = LIVE_ITEMS
            return context
        if bounds["first"] is None:
            events = Event.objects.none()
        else:
            events = Event.objects.filter(
                Q(run=run) | Q(run__isnull=True),
                channel_id=run.channel_id,
                seq__gte=bounds["first"],
                seq__lte=bounds["last"],
            ).order_by("seq")
        rows = events.values_list("seq", "name", "data")
        page = Paginator(rows, HISTORY_PAGE_SIZE).get_page(request.GET.get("history"))
        # The one compaction of the app (the template tag's), with nothing left out.
        items = compact(run.channel.name, page.object_list, complete=True).items
        _name_users(items)
        context.update(history=items, history_page=page)
        return context

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
            # Django's change view looks the run up again: the same row, no second query.
            request._agch_run = run  # type: ignore[attr-defined]
        return super().change_view(request, object_id, form_url, context)

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        cached = getattr(request, "_agch_run", None)
        if cached is not None and from_field is None and str(cached.pk) == str(object_id):
            return cached
        return super().get_object(request, object_id, from_field)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        # The change form shows the channel and the owner (and the live view needs the
        # channel's name): joined. The list would join the same (list_select_related,
        # which Django skips for a queryset that already selects related rows).
        return super().get_queryset(request).select_related("channel", "created_by")


def _name_users(items: Iterable[Item]) -> None:
    """Replace the user ids that control items recorded with usernames, in one query."""
    sent = [i for i in items if isinstance(i, Message | StatusLine) and i.user is not None]
    if not sent:
        return
    ids = {i.user for i in sent if isinstance(i.user, int | str)}
    user_model = get_user_model()
    names = {
        user.pk: user.get_username() for user in user_model._default_manager.filter(pk__in=ids)
    }
    for item in sent:
        item.user = names.get(item.user, f"user #{item.user}")


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
