"""The one way a control message (input, interrupt, cancel, supersede) reaches a run.

Every surface (WebSocket frames, ``POST messages/``, the admin, the runtime's own
double-texting) calls :func:`send_control`: the message is persisted as an event
first, so a run that misses it live still finds it in the log; after the commit it
goes out on the channel's control group to whichever process executes the run; and
:data:`control_sent` lets this process react at once (the runtime connects to it in
its app's ``ready()``, so nothing here imports the runtime).
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from django.db import transaction
from django.dispatch import Signal

from agent_channels.channel.log import EventDraft, append
from agent_channels.channel.names import control_group
from agent_channels.channel.wire import get_wire

__all__ = [
    "CONTROL_KINDS",
    "CONTROL_MESSAGE",
    "asend_control",
    "control_event_name",
    "control_message",
    "control_sent",
    "send_control",
]

logger = logging.getLogger(__name__)

#: The Channels message type control travels under on the control group.
CONTROL_MESSAGE = "agent_channels.control"
#: What clients may send; "supersede" is the runtime's own (a newer run replaces this one).
CONTROL_KINDS = ("input", "interrupt", "cancel", "supersede")

#: Sent in the sending process after a control message is persisted, with the keyword
#: arguments ``channel``, ``seq``, ``kind``, ``data`` and ``frame_id``.
control_sent = Signal()


def control_event_name(kind: str) -> str:
    """The event a control message is logged as: ``client.<kind>``, ``control.supersede``."""
    return "control.supersede" if kind == "supersede" else f"client.{kind}"


def control_message(
    channel: str, seq: int, kind: str, data: Any, frame_id: Any = None
) -> dict[str, Any]:
    """The layer message for a persisted control event."""
    return {
        "type": CONTROL_MESSAGE,
        "channel": channel,
        "seq": seq,
        "kind": kind,
        "data": data,
        "id": frame_id,
    }


def send_control(
    channel: str,
    kind: str,
    data: Any = None,
    *,
    frame_id: Any = None,
    user: Any = None,
    run: Any = None,
) -> int:
    """Persist a control message, send it to the channel's run, and return its seq.

    ``user`` (a user or id) is recorded as the sender; ``run`` (a run or id) when the
    message is for one run rather than whatever runs on the channel.
    """
    if kind not in CONTROL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(CONTROL_KINDS)}, not {kind!r}.")
    payload = {"data": data, "id": frame_id, "user": getattr(user, "pk", user)}
    with transaction.atomic():
        event = append(
            channel, [EventDraft(control_event_name(kind), payload, getattr(run, "pk", run))]
        )[0]
        message = control_message(channel, event.seq, kind, data, frame_id)
        transaction.on_commit(lambda: _after_commit(channel, message))
    return event.seq


def _after_commit(channel: str, message: dict[str, Any]) -> None:
    # Never raises: a failed live send is logged by the wire, and the run finds the
    # message in the log when it subscribes.
    get_wire().send(control_group(channel), message)
    for receiver, result in control_sent.send_robust(
        sender=send_control,
        channel=channel,
        seq=message["seq"],
        kind=message["kind"],
        data=message["data"],
        frame_id=message["id"],
    ):
        if isinstance(result, Exception):
            # It is in the log: a run that missed it here still finds it there.
            logger.error(
                "agent_channels: %r failed on %s #%d",
                receiver,
                message["kind"],
                message["seq"],
                exc_info=result,
            )


async def asend_control(
    channel: str,
    kind: str,
    data: Any = None,
    *,
    frame_id: Any = None,
    user: Any = None,
    run: Any = None,
) -> int:
    """:func:`send_control` for async code (consumers)."""
    seq: int = await database_sync_to_async(send_control)(
        channel, kind, data, frame_id=frame_id, user=user, run=run
    )
    return seq
