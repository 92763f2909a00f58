"""Waking readers that wait at a stream's tail, over the channel layer.

A long-poll or SSE request joins the stream's group on a channel of its own, then reads
the database, then waits on that channel: whatever commits after the read arrives as a
message, so no reader polls the database. Writers announce after their commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from types import TracebackType
from typing import Any

from channels.layers import get_channel_layer

from agent_channels.channel.receiving import receive
from agent_channels.conf import get_config

__all__ = ["WAKE_MESSAGE", "Waiter", "announce", "stream_group"]

WAKE_MESSAGE = "durable_streams.wake"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def stream_group(path: str) -> str:
    """The layer group of a stream: readable prefix plus a digest (group names are ASCII, < 100)."""
    digest = hashlib.sha256(path.encode("utf-8")).hexdigest()[:40]
    return f"agds.{_UNSAFE.sub('_', path)[:40]}.{digest}"


async def announce(path: str) -> None:
    """Tell the stream's waiting readers that it changed (new bytes, closed, deleted)."""
    layer = get_channel_layer(get_config()["CHANNEL_LAYER"])
    if layer is None:
        return
    try:
        await layer.group_send(stream_group(path), {"type": WAKE_MESSAGE})
    except Exception:  # the log has the data; a reader times out and rereads
        import logging

        logging.getLogger(__name__).exception("agent_channels: waking readers of %r failed", path)


class Waiter:
    """``async with Waiter([group]) as w: ... await w.wait(seconds)``."""

    def __init__(self, groups: list[str]) -> None:
        self.groups = groups
        self.layer: Any = get_channel_layer(get_config()["CHANNEL_LAYER"])
        self.channel: str | None = None
        self.recheck = False

    async def __aenter__(self) -> Waiter:
        if self.layer is not None:
            self.channel = await self.layer.new_channel()
            for group in self.groups:
                await self.layer.group_add(group, self.channel)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.channel is None:
            return
        for group in self.groups:
            with contextlib.suppress(Exception):
                await self.layer.group_discard(group, self.channel)

    async def wait(self, timeout: float) -> dict[str, Any] | None:
        """The next message for this reader, or None after ``timeout`` seconds."""
        if self.channel is None:
            await asyncio.sleep(timeout)
            return None
        return await receive(self.layer, self.channel, timeout)

    async def next(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True when the reader should read again.

        After a wake-up, the next wait lasts ``HEAD_CHECK_MS`` at most and then says
        "read": the layer may have dropped the last message of a burst (channels-redis
        drops silently under load), and the WebSocket pump heals the same way.
        """
        quiet = get_config()["HEAD_CHECK_MS"] / 1000.0
        if self.recheck and quiet > 0:
            self.recheck = False
            if await self.wait(min(timeout, quiet)) is not None:
                self.recheck = True
            return True
        if await self.wait(timeout) is None:
            return False
        self.recheck = True
        return True
