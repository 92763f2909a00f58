"""The log: channels, runs and the events published to them."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models

from agent_channels.channel.names import MAX_NAME_LENGTH

__all__ = ["Channel", "Event", "Presence", "Run", "RunStatus", "Step", "StepStatus"]


class Channel(models.Model):
    """A named, persistent address for one workflow: the agent and its clients attach here."""

    name = models.CharField(max_length=MAX_NAME_LENGTH, unique=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="agent_channels",
    )
    #: The seq of the newest event; the next event gets ``last_seq + 1``. Never decreases,
    #: even when events are pruned, so a seq is never reused.
    last_seq = models.PositiveBigIntegerField(default=0)
    #: Events with ``seq <= pruned_seq`` were deleted by retention.
    pruned_seq = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    last_event_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_event_at", "-id"]
        # Checked by OwnerAccessPolicy for channels the user does not own; grant them to
        # operators (a group) instead of relying on is_staff. Superusers have every permission.
        permissions = [
            ("view_all_channels", "Can follow every channel"),
            ("control_all_runs", "Can send input, interrupt and cancel to every channel"),
        ]

    def __str__(self) -> str:
        return self.name


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting for input"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    INTERRUPTED = "interrupted", "Interrupted"


class RunQuerySet(models.QuerySet["Run"]):
    def active(self) -> RunQuerySet:
        return self.filter(status__in=Run.ACTIVE_STATUSES)


class Run(models.Model):
    """One execution of an agent on a channel."""

    ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="runs")
    agent = models.CharField(max_length=200)
    status = models.CharField(max_length=20, choices=RunStatus.choices, default=RunStatus.QUEUED)
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="agent_runs",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The runtime's bookkeeping (agent_channels.runtime): how often the run was claimed by a
    # worker, which worker holds it and when it last proved it is alive.
    attempts = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True, default="")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    #: When the run was last handed to the backend: the reaper re-sends a queued run whose
    #: task was lost once per staleness window, not on every pass.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    #: Control events (interrupt, cancel) with ``seq <= control_seq`` were already handled;
    #: a restarted run skips them instead of obeying them twice.
    control_seq = models.PositiveBigIntegerField(default=0)
    #: Seconds the run may take from its first start; None means the AGENT_CHANNELS default.
    time_limit = models.PositiveIntegerField(null=True, blank=True)
    model = models.CharField(max_length=200, blank=True, default="")
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["channel", "status"],
                name="agch_run_active_idx",
                condition=models.Q(status__in=["queued", "running", "waiting"]),
            ),
            # The reaper's query: running runs whose heartbeat is older than a threshold.
            models.Index(
                fields=["heartbeat_at"],
                name="agch_run_running_hb_idx",
                condition=models.Q(status="running"),
            ),
            # The admin's run list and date filters order and slice by creation time.
            models.Index(fields=["created_at"], name="agch_run_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.agent} on {self.channel_id} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class StepStatus(models.TextChoices):
    STARTED = "started", "Started"
    COMPLETED = "completed", "Completed"


class Step(models.Model):
    """One journaled step of a run: a model call, a tool call, an input wait, an emit.

    A restarted run replays completed steps from here instead of executing them again.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    kind = models.CharField(max_length=50)
    name = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=20, choices=StepStatus.choices, default=StepStatus.STARTED)
    result: models.JSONField[Any] = models.JSONField(null=True, blank=True)
    attempt = models.PositiveIntegerField(default=1)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [
            models.UniqueConstraint(fields=["run", "index"], name="agch_step_run_index_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.run_id} #{self.index} {self.kind} {self.name}".rstrip()


class Event(models.Model):
    """One published event. ``(channel, seq)`` is unique; seqs are contiguous per channel."""

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveBigIntegerField()
    name = models.CharField(max_length=100)
    run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    data: models.JSONField[Any] = models.JSONField(default=dict)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["channel", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["channel", "seq"], name="agch_event_channel_seq_uniq")
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.name}"

    def to_frame(self) -> dict[str, Any]:
        """The wire representation documented in docs/protocol.rst."""
        return {
            "type": "event",
            "seq": self.seq,
            "event": self.name,
            "run": str(self.run_id) if self.run_id else None,
            "data": self.data,
            "ts": self.created_at.isoformat(),
        }


class Presence(models.Model):
    """One open connection watching a channel; it counts while ``expires_at`` is ahead.

    Each connection refreshes its row well before it expires, so a server process that
    dies leaves rows that simply stop counting (and are deleted at the next join).
    """

    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="presence")
    #: The connection's Channels channel name: unique per open socket.
    connection = models.CharField(max_length=200, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="agent_channel_presence",
    )
    expires_at = models.DateTimeField()
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "presence"
        indexes = [models.Index(fields=["channel", "expires_at"], name="agch_presence_live_idx")]

    def __str__(self) -> str:
        return f"{self.user or 'anonymous'} on {self.channel_id}"


# Durable Streams storage belongs to this app (agent_channels.durable_streams).
from agent_channels.durable_streams.models import Stream, StreamChunk, StreamProducer  # noqa: E402, F401
