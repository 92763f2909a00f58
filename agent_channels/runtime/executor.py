"""Executing one run in this process: claim, subscribe, call the agent, always end it."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.db import close_old_connections

from agent_channels.channel.connections import release as release_connection
from agent_channels.channel.connections import retrying
from agent_channels.channel.log import EventDraft, append
from agent_channels.models import Event, RunStatus
from agent_channels.runtime import calls, lifecycle
from agent_channels.runtime.context import RunContext
from agent_channels.runtime.control import (
    Inbox,
    catch_up,
    get_listener,
    register_inbox,
    unregister_inbox,
)
from agent_channels.runtime.errors import (
    Cancelled,
    Interrupted,
    Superseded,
    Suspended,
    TimeLimitExceeded,
)
from agent_channels.runtime.monitor import get_monitor
from agent_channels.runtime.registry import get_agent

__all__ = ["execute_run"]

logger = logging.getLogger(__name__)


def _abort_orphaned_messages(run_id: Any, channel: str, keep: set[str]) -> None:
    """Mark the messages a dead worker left half-streamed as aborted.

    Except those in ``keep``: background model calls the recovered run takes over.
    """
    names = ("message.delta", "message.completed", "message.aborted")
    rows = Event.objects.filter(run_id=run_id, name__in=names).values_list("name", "data")
    texts: dict[str, list[str]] = {}
    closed: set[str] = set()
    for name, data in rows.order_by("seq"):
        message_id = str((data or {}).get("message_id", ""))
        if name == "message.delta":
            texts.setdefault(message_id, []).append(str(data.get("text", "")))
        else:
            closed.add(message_id)
    drafts = [
        EventDraft(
            "message.aborted",
            {"message_id": mid, "text": "".join(parts), "reason": "worker_lost"},
            run_id,
        )
        for mid, parts in texts.items()
        if mid not in closed and mid not in keep
    ]
    if drafts:
        append(channel, drafts)


def execute_run(run_id: str) -> str:
    """Execute (or resume) a run; returns what happened, for logs and tests.

    Never raises for anything the agent does: every way out of an agent ends the run
    with a terminal status and event, except a wait for input (the run resumes later).
    """
    close_old_connections()
    try:
        claimed = lifecycle.claim(run_id)
    except Exception:
        logger.exception("agent_channels: claiming run %s failed", run_id)
        raise
    if claimed is None:
        return "skipped"
    run, channel, recovering = claimed
    inbox = Inbox(channel, run.control_seq)
    register_inbox(inbox)
    ctx: RunContext | None = None
    taken_over: set[str] = set()

    def release(reason: str) -> None:
        # Background responses the run ended without taking over would go on costing.
        if taken_over:
            try:
                calls.release_background_calls(run.pk, channel, reason)
            except Exception:
                logger.exception("agent_channels: releasing run %s's responses failed", run.pk)

    try:
        get_listener().subscribe(channel)
        retrying(lambda: catch_up(inbox, run.channel_id))
        if recovering:
            taken_over = retrying(lambda: calls.resumable_message_ids(run.pk))
            _abort_orphaned_messages(run.pk, channel, taken_over)
        agent = get_agent(run.agent)
        ctx = RunContext(run, channel, inbox, run.attempts)
        get_monitor().watch(ctx)
        ctx.check_control()
        # The agent may wait long before its first write: not on a pooled connection.
        release_connection()
        output = agent(ctx, run.input)
        try:
            json.dumps(output)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"The agent returned output that is not JSON: {exc}") from None
        release("abandoned")
        lifecycle.finish(run.pk, RunStatus.COMPLETED, {"output": output})
        return "completed"
    except Suspended:
        return "waiting"
    except Cancelled as exc:
        release("cancelled")
        lifecycle.finish(run.pk, RunStatus.CANCELLED, {"data": exc.data})
        return "cancelled"
    except Superseded as exc:
        release("cancelled")
        lifecycle.finish(run.pk, RunStatus.INTERRUPTED, {"reason": "superseded", "by": exc.by})
        return "interrupted"
    except Interrupted as exc:
        release("interrupted")
        lifecycle.finish(
            run.pk,
            RunStatus.INTERRUPTED,
            {"reason": "interrupted", "data": exc.data, "text": exc.text},
        )
        return "interrupted"
    except TimeLimitExceeded:
        limit = ctx.deadline if ctx is not None else None
        release("time_limit")
        lifecycle.finish(
            run.pk,
            RunStatus.FAILED,
            {"error": "The run exceeded its time limit.", "code": "time_limit", "deadline": limit},
        )
        return "failed"
    except Exception as exc:
        if type(exc).__name__ == "SoftTimeLimitExceeded":
            # Celery's soft limit (backends.celery.time_limits): the run overran its deadline
            # somewhere that never checks it. Said like the run's own time limit.
            release("time_limit")
            lifecycle.finish(
                run.pk,
                RunStatus.FAILED,
                {"error": "The run exceeded its time limit.", "code": "time_limit"},
            )
            return "failed"
        logger.exception("agent_channels: run %s (%s) failed", run.pk, run.agent)
        release("error")
        lifecycle.finish(run.pk, RunStatus.FAILED, {"error": f"{type(exc).__name__}: {exc}"})
        return "failed"
    finally:
        if ctx is not None:
            get_monitor().unwatch(ctx)
        if unregister_inbox(inbox):
            get_listener().unsubscribe(channel)
        close_old_connections()
