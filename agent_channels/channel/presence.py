"""Presence: who is watching a channel, kept so that a dead server process leaves no ghosts.

Every open WebSocket keeps a :class:`~agent_channels.models.Presence` row that expires
``PRESENCE_TTL_SECONDS`` after its last refresh and is refreshed three times per TTL. Only
unexpired rows count, so the rows of a process that died (no disconnect, no cleanup) stop
counting within one TTL, and the next join deletes them.

Presence is opt-in per connection: a client that opens the socket with ``presence=1`` in
its query string counts as a watcher and receives ``presence`` frames (the packaged client
always does); other connections neither count nor receive them.

A join or a leave nudges the channel's presence group; each connection then recounts (at
most once a second) and sends a ``presence`` frame when the answer changed::

    {"type": "presence", "count": 3, "users": ["alice", "bob"]}

``count`` is the number of open connections; ``users`` the distinct logged-in users among
them, sent only to connections whose user may send to the channel (the access policy's
``can_send``): readers see how many watch, participants see who.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.db.models import Count
from django.utils import timezone

from agent_channels.channel.names import event_group
from agent_channels.channel.receiving import receive
from agent_channels.conf import get_config
from agent_channels.models import Channel, Presence

__all__ = [
    "PresenceTracker",
    "Watchers",
    "join",
    "leave",
    "presence_group",
    "wants_presence",
    "watcher_counts",
    "watchers",
]

PRESENCE_MESSAGE = "agent_channels.presence"
#: Recounts per connection are at most this frequent, however many joins arrive.
_MIN_RECOUNT_SECONDS = 1.0


def wants_presence(scope: dict[str, Any]) -> bool:
    """Whether a WebSocket scope's query string has ``presence=1``."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return bool(query.get("presence", [""])[-1] == "1")


def presence_group(name: str) -> str:
    """The Channels group whose members hear that someone joined or left ``name``."""
    return "agpres" + event_group(name)[len("agch") :]


@dataclass(frozen=True)
class Watchers:
    count: int = 0
    users: list[str] = field(default_factory=list)

    def frame(self, with_users: bool) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "presence", "count": self.count}
        if with_users:
            frame["users"] = self.users
        return frame


def _ttl() -> dt.timedelta:
    return dt.timedelta(seconds=float(get_config()["PRESENCE_TTL_SECONDS"]))


def join(channel: str, connection: str, user_id: Any) -> bool:
    """Count ``connection`` as watching ``channel`` for one TTL; False if no such channel."""
    channel_id = Channel.objects.filter(name=channel).values_list("id", flat=True).first()
    if channel_id is None:
        return False
    now = timezone.now()
    # The ghosts of processes that died: they already stopped counting; now they go.
    Presence.objects.filter(channel_id=channel_id, expires_at__lt=now).delete()
    Presence.objects.update_or_create(
        connection=connection,
        defaults={"channel_id": channel_id, "user_id": user_id, "expires_at": now + _ttl()},
    )
    return True


def refresh(connection: str) -> bool:
    """Push the connection's expiry one TTL ahead; False if its row is gone."""
    expires = timezone.now() + _ttl()
    return bool(Presence.objects.filter(connection=connection).update(expires_at=expires))


def leave(connection: str) -> None:
    Presence.objects.filter(connection=connection).delete()


def watchers(channel: str) -> Watchers:
    """Who watches ``channel`` now: open connections and their distinct users."""
    username = f"user__{get_user_model().USERNAME_FIELD}"
    rows = Presence.objects.filter(channel__name=channel, expires_at__gt=timezone.now())
    names = list(rows.values_list(username, flat=True))
    return Watchers(len(names), sorted({str(n) for n in names if n is not None}))


def watcher_counts(channel_ids: Iterable[int]) -> dict[int, int]:
    """Open connections per channel for many channels in one query (a page of a list).

    Channels nobody watches are absent from the answer.
    """
    ids = list(channel_ids)
    if not ids:
        return {}
    rows = (
        Presence.objects.filter(channel_id__in=ids, expires_at__gt=timezone.now())
        .values("channel_id")
        .annotate(count=Count("id"))
        .order_by()
        .values_list("channel_id", "count")
    )
    return dict(rows)


class PresenceTracker:
    """Keeps one connection's presence row fresh and its client told, until cancelled."""

    def __init__(
        self,
        channel: str,
        connection: str,
        user: Any,
        show_users: bool,
        send_text: Callable[[str], Awaitable[None]],
    ) -> None:
        self.channel = channel
        self.connection = connection
        self.user_id = (
            getattr(user, "pk", None) if getattr(user, "is_authenticated", False) else None
        )
        self.show_users = show_users
        self.send_text = send_text
        self.config = get_config()
        self.layer = get_channel_layer(self.config["CHANNEL_LAYER"])

    async def run(self) -> None:
        ttl = float(self.config["PRESENCE_TTL_SECONDS"])
        if ttl <= 0 or self.layer is None:
            return
        group = presence_group(self.channel)
        inbox = await self.layer.new_channel()
        await self.layer.group_add(group, inbox)
        joined = False
        try:
            joined = await database_sync_to_async(join)(self.channel, self.connection, self.user_id)
            await self._nudge(group)
            await self._loop(inbox, ttl / 3, joined)
        finally:
            # Cancelled (the socket closed): leave at once instead of waiting for expiry.
            await database_sync_to_async(leave)(self.connection)
            await self.layer.group_discard(group, inbox)
            await self._nudge(group)

    async def _loop(self, inbox: str, refresh_every: float, joined: bool) -> None:
        last: dict[str, Any] | None = None
        next_refresh = time.monotonic() + refresh_every
        while True:
            counted_at = time.monotonic()
            current = (await database_sync_to_async(watchers)(self.channel)).frame(self.show_users)
            if current != last:
                await self.send_text(json.dumps(current, separators=(",", ":")))
                last = current
            # A nudge, or time to refresh.
            await receive(self.layer, inbox, max(0.0, next_refresh - time.monotonic()))
            if time.monotonic() >= next_refresh:
                # A row lost to a ghost sweep, or a channel created since: join (again).
                if not (joined and await database_sync_to_async(refresh)(self.connection)):
                    joined = await database_sync_to_async(join)(
                        self.channel, self.connection, self.user_id
                    )
                next_refresh = time.monotonic() + refresh_every
            wait = _MIN_RECOUNT_SECONDS - (time.monotonic() - counted_at)
            if wait > 0:
                await asyncio.sleep(wait)

    async def _nudge(self, group: str) -> None:
        await self.layer.group_send(group, {"type": PRESENCE_MESSAGE})
