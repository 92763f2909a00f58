"""How many WebSockets and event streams each user holds open (``MAX_SOCKETS_PER_USER``).

With a cache the server processes share as ``THROTTLE_CACHE`` (Redis, Memcached) the limit
holds across processes: a user has ``limit`` slot keys, ``agch:sockets:<pk>:0`` to
``<limit - 1>``; a connection takes the first free one with ``cache.add`` (atomic in those
backends) and a time-out of ``SOCKET_SLOT_SECONDS``, refreshes it every third of that while
it lives, and deletes it when it ends. A process that dies without closing its connections
(SIGKILL, a lost machine) leaves slots that expire after ``SOCKET_SLOT_SECONDS``.

With the per-process ``LocMemCache`` (or ``DummyCache``) the count is kept in this process's
memory instead: a user behind a load balancer with N processes may then hold up to N times
the limit. That still bounds what one user can pin in any one process (a pump, a layer
channel and a send buffer per socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache import BaseCache, caches
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.locmem import LocMemCache

from agent_channels.conf import get_config

__all__ = ["CacheSlots", "SocketSlots", "open_sockets", "shared_cache"]

logger = logging.getLogger(__name__)

# The event loop of a server process is single-threaded: no lock is needed.
_open: Counter[Any] = Counter()


def shared_cache() -> BaseCache | None:
    """``THROTTLE_CACHE`` when processes can share it; None for a per-process cache."""
    cache = caches[get_config()["THROTTLE_CACHE"]]
    if isinstance(cache, LocMemCache | DummyCache):
        return None
    return cache


class CacheSlots:
    """A user's numbered slots in a shared cache, each held by one connection until it
    expires or is deleted. Blocking cache calls: run them in a thread from async code."""

    def __init__(self, cache: BaseCache, user_pk: Any, ttl: float) -> None:
        self.cache = cache
        self.prefix = f"agch:sockets:{user_pk}:"
        self.ttl = ttl
        self.token = uuid.uuid4().hex
        self.key: str | None = None

    def take(self, limit: int) -> bool:
        keys = [f"{self.prefix}{index}" for index in range(limit)]
        held = self.cache.get_many(keys)
        for key in keys:
            # add() is atomic: two connections racing for one free slot get one each or none.
            if key not in held and self.cache.add(key, self.token, timeout=self.ttl):
                self.key = key
                return True
        return False

    def refresh(self) -> None:
        if self.key is None:
            return
        if self.cache.get(self.key) == self.token:
            self.cache.touch(self.key, timeout=self.ttl)
        else:
            # Expired (the process stalled past the TTL): hold it again if still free, else
            # the connection runs on uncounted rather than being cut off.
            self.cache.add(self.key, self.token, timeout=self.ttl)

    def release(self) -> None:
        if self.key is not None and self.cache.get(self.key) == self.token:
            self.cache.delete(self.key)
        self.key = None

    def count(self, limit: int) -> int:
        return len(self.cache.get_many([f"{self.prefix}{index}" for index in range(limit)]))


class SocketSlots:
    """One connection's claim on its user's slots: :meth:`take` before it opens,
    :meth:`keep` once it runs (refreshes a shared slot), :meth:`give_back` when it ends
    (idempotent, so every way out of a connection may call it)."""

    def __init__(self) -> None:
        self.key: Any = None
        self.shared: CacheSlots | None = None
        self._keeper: asyncio.Task[None] | None = None

    async def take(self, user: Any, limit: int | None) -> bool:
        """Count this connection for ``user``; False (nothing counted) if they are at ``limit``.

        Anonymous users are not counted: they are refused by the policy or read public
        channels, which a per-user count cannot bound anyway.
        """
        if user is None or not getattr(user, "is_authenticated", False) or limit is None:
            return True
        cache = shared_cache()
        if cache is not None:
            shared = CacheSlots(cache, user.pk, float(get_config()["SOCKET_SLOT_SECONDS"]))
            try:
                if not await sync_to_async(shared.take, thread_sensitive=False)(limit):
                    return False
            except Exception:
                # The cache is down: serve the connection uncounted rather than refuse all.
                logger.warning("agent_channels: counting sockets failed", exc_info=True)
                return True
            self.shared = shared
            return True
        key = user.pk
        if _open[key] >= limit:
            return False
        _open[key] += 1
        self.key = key
        return True

    def keep(self) -> None:
        """Refresh a shared slot every third of its time-out until :meth:`give_back`."""
        if self.shared is not None and self._keeper is None:
            self._keeper = asyncio.create_task(self._keep(self.shared))

    async def _keep(self, shared: CacheSlots) -> None:
        while True:
            await asyncio.sleep(shared.ttl / 3)
            try:
                await sync_to_async(shared.refresh, thread_sensitive=False)()
            except Exception:
                # A cache hiccup: the slot may lapse, which lets the user one more in.
                logger.warning("agent_channels: refreshing a socket slot failed", exc_info=True)

    def give_back_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """:meth:`give_back` on ``loop``, from any thread (a response's ``close()``)."""
        with contextlib.suppress(RuntimeError):  # the loop is gone, and the process with it
            loop.call_soon_threadsafe(lambda: loop.create_task(self.give_back()))

    async def give_back(self) -> None:
        if self._keeper is not None:
            if self._keeper is not asyncio.current_task():
                self._keeper.cancel()
            self._keeper = None
        shared, self.shared = self.shared, None
        if shared is not None:
            with contextlib.suppress(Exception):  # it expires on its own
                await sync_to_async(shared.release, thread_sensitive=False)()
        if self.key is None:
            return
        _open[self.key] -= 1
        if _open[self.key] <= 0:
            del _open[self.key]
        self.key = None


def open_sockets(user_pk: Any) -> int:
    """Connections ``user_pk`` holds: across processes with a shared cache, else in this
    process (for tests and diagnostics)."""
    cache = shared_cache()
    limit = get_config()["MAX_SOCKETS_PER_USER"]
    if cache is not None and limit is not None:
        return CacheSlots(cache, user_pk, 1).count(limit)
    return _open[user_pk]
