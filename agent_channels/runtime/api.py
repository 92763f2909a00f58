"""Starting runs: :func:`start_run`."""

from __future__ import annotations

from typing import Any, Literal

from django.contrib.auth import get_user_model
from django.db import transaction

from agent_channels.access import get_access_policy
from agent_channels.channel.control import send_control
from agent_channels.channel.log import EventDraft, InvalidEvent, append, check_storable
from agent_channels.channel.names import validate_name
from agent_channels.conf import get_config
from agent_channels.models import Channel, Run, RunStatus
from agent_channels.runtime import lifecycle
from agent_channels.runtime.errors import (
    AgentForbidden,
    QuotaExceeded,
    RunConflict,
    RunError,
    RunForbidden,
)
from agent_channels.runtime.registry import get_agent

__all__ = ["POLICIES", "start_run"]

Policy = Literal["reject", "enqueue", "interrupt"]
POLICIES = ("reject", "enqueue", "interrupt")


def start_run(
    channel: str,
    agent: str,
    input: Any = None,
    *,
    user: Any = None,
    on_active: Policy | None = None,
    time_limit: int | None = None,
) -> Run:
    """Create a run of ``agent`` on ``channel``; it is enqueued when the transaction commits.

    ``on_active`` decides what happens when another run of the channel is still active
    (default: ``AGENT_CHANNELS["DOUBLE_TEXTING"]``): ``"reject"`` raises
    :class:`RunConflict`, ``"enqueue"`` starts this run after the active one ends,
    ``"interrupt"`` stops the active run (status ``interrupted``) and then starts this one.

    With a ``user``, a channel that already exists and belongs to another user is used only
    if the access policy lets ``user`` send to it; otherwise :class:`RunForbidden` is
    raised. ``user=None`` (your own server code) and channels without an owner are not
    checked here: decide those before calling (the HTTP API asks the policy first).
    With a ``user``, the policy's ``can_run(user, channel, agent)`` is asked as well
    (:class:`AgentForbidden` when it refuses).

    Quotas (:class:`QuotaExceeded`, with ``code``): a ``user`` may have at most
    ``MAX_ACTIVE_RUNS_PER_USER`` active runs, and a channel at most
    ``MAX_QUEUED_RUNS_PER_CHANNEL`` runs queued behind its active one, whoever starts them.
    """
    validate_name(channel)
    get_agent(agent)
    policy = on_active or get_config()["DOUBLE_TEXTING"]
    if policy not in POLICIES:
        raise RunError(f"on_active must be one of {', '.join(POLICIES)}, not {policy!r}.")
    try:
        # The same test as event data: the input is stored as JSON and echoed in run.queued.
        check_storable(input)
    except InvalidEvent as exc:
        raise RunError(f"The run's input cannot be stored: {exc}") from None
    if time_limit is not None and (not isinstance(time_limit, int) or time_limit <= 0):
        raise RunError("time_limit must be a positive number of seconds.")
    owner_id = getattr(user, "pk", None)
    policy_object = get_access_policy()
    if owner_id is not None and not policy_object.can_run(user, channel, agent):
        raise AgentForbidden(f"You may not run {agent!r} on this channel.")
    config = get_config()
    with transaction.atomic():
        if owner_id is not None and config["MAX_ACTIVE_RUNS_PER_USER"] is not None:
            _check_user_quota(owner_id, config["MAX_ACTIVE_RUNS_PER_USER"])
        Channel.objects.bulk_create(
            [Channel(name=channel, owner_id=owner_id)], ignore_conflicts=True
        )
        # Locking the channel row serialises starts on one channel, so two concurrent
        # starts cannot both see "nothing active".
        row = Channel.objects.select_for_update().get(name=channel)
        # Decided under the lock: a view's access check ran before the channel may have been
        # created by someone else, and a run must never land in another user's channel.
        if (
            owner_id is not None
            and row.owner_id is not None
            and row.owner_id != owner_id
            and not policy_object.can_send(user, channel)
        ):
            raise RunForbidden("You may not send to this channel.")
        active = list(Run.objects.active().filter(channel=row).order_by("created_at"))
        if active and policy == "reject":
            raise RunConflict(
                f"Run {active[0].pk} is still {active[0].status} on this channel.", active[0].pk
            )
        queue_limit = config["MAX_QUEUED_RUNS_PER_CHANNEL"]
        if policy == "enqueue" and queue_limit is not None:
            # Exact: counted under the channel lock that every start takes.
            queued = sum(1 for run in active if run.status == RunStatus.QUEUED)
            if queued >= queue_limit:
                raise QuotaExceeded(
                    f"{queued} runs already wait on this channel (at most {queue_limit}).",
                    "too_many_queued",
                )
        # The run.queued event below takes the next seq: the channel row is locked, so
        # nothing else can take it first. Set now, it saves an UPDATE (checked below).
        queued_seq = row.last_seq + 1
        run = Run.objects.create(
            channel=row,
            agent=agent,
            input=input,
            created_by=user if owner_id is not None else None,
            time_limit=time_limit,
            control_seq=queued_seq,
        )
        queued_event = append(
            channel,
            [
                EventDraft(
                    "run.queued",
                    {
                        "agent": agent,
                        "input": input,
                        "behind": len(active),
                        # Updated figures: GET runs/<id>/ "queue" (lifecycle.queue_position).
                        "reason": (
                            lifecycle.CHANNEL_BUSY if active else lifecycle.WAITING_FOR_WORKER
                        ),
                    },
                    run.pk,
                )
            ],
        )[0]
        if queued_event.seq != queued_seq:  # pragma: no cover - a writer that skips the lock
            Run.objects.filter(pk=run.pk).update(control_seq=queued_event.seq)
            run.control_seq = queued_event.seq
        if policy == "interrupt":
            for other in active:
                _supersede(other, channel, run)
        if not active:
            lifecycle.enqueue(run.pk)
    # Not read back: the run as queued (a worker may already be starting it; GET runs/<id>/
    # says what it is doing now), and one query less before the first event.
    return run


def _check_user_quota(user_id: Any, limit: int) -> None:
    """Refuse a start past the user's active-run quota.

    The user's row is locked first, so a user's concurrent starts (on any channels) are
    counted one after the other and cannot all slip under the limit together.
    """
    list(get_user_model()._default_manager.select_for_update().filter(pk=user_id).values("pk"))
    active = Run.objects.active().filter(created_by_id=user_id).count()
    if active >= limit:
        raise QuotaExceeded(
            f"You have {active} active runs (at most {limit}); wait for one to finish.",
            "too_many_runs",
        )


def _supersede(other: Run, channel: str, by: Run) -> None:
    if other.status != RunStatus.RUNNING:
        # Nobody executes it right now: end it here.
        lifecycle._finish_locked(
            other, channel, RunStatus.INTERRUPTED, {"reason": "superseded", "by": str(by.pk)}
        )
        return
    send_control(channel, "supersede", {"by": str(by.pk)}, run=other.pk)
