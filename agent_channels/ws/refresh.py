"""Joining the event groups again after the channel layer forgot them.

Each socket (and each Server-Sent Events stream) joins its channel's group once, at connect. A Redis that restarts empty (or
evicts keys) forgets the membership, and the socket would get no live event again until
it reconnects. One task per server process re-adds every open socket to its group each
``GROUP_REFRESH_SECONDS`` and reads the newest seq of their channels in one query; a
socket behind the log catches up from it (the pump), so what the layer lost meanwhile
arrives too.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Protocol

from channels.db import database_sync_to_async

from agent_channels.conf import get_config
from agent_channels.models import Channel

__all__ = ["Member", "refresh_once", "track", "untrack"]

logger = logging.getLogger(__name__)


class Member(Protocol):
    """What the refresher needs of a consumer."""

    channel: str
    channel_name: str
    channel_layer: Any
    group: str | None

    def heads_known(self, last_seq: int) -> None:
        """The log's newest seq of the member's channel is ``last_seq``."""


_members: weakref.WeakSet[Any] = weakref.WeakSet()
_task: asyncio.Task[None] | None = None


def track(member: Member) -> None:
    """Keep ``member`` in its group; starts the process's refresher on the running loop."""
    global _task
    _members.add(member)
    every = float(get_config()["GROUP_REFRESH_SECONDS"] or 0)
    if every > 0 and (_task is None or _task.done() or _task.get_loop().is_closed()):
        _task = asyncio.get_running_loop().create_task(_refresh_forever(every))


def untrack(member: Member) -> None:
    _members.discard(member)


def _heads(names: list[str]) -> dict[str, int]:
    rows = Channel.objects.filter(name__in=names).values_list("name", "last_seq")
    return dict(rows)


async def refresh_once() -> int:
    """Re-add every tracked socket to its group, then tell each its channel's head."""
    members = [m for m in list(_members) if m.group is not None]
    if not members:
        return 0
    for member in members:
        try:
            await member.channel_layer.group_add(member.group, member.channel_name)
        except Exception:
            logger.warning("agent_channels: re-joining %r failed", member.group, exc_info=True)
            break  # the layer is down: the next period tries again
    heads = await database_sync_to_async(_heads)(sorted({m.channel for m in members}))
    for member in members:
        if member.channel in heads:
            member.heads_known(heads[member.channel])
    return len(members)


async def _refresh_forever(every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await refresh_once()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("agent_channels: refreshing group memberships failed", exc_info=True)
