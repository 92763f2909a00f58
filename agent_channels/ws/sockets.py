"""How many WebSockets each user holds open in this server process (``MAX_SOCKETS_PER_USER``).

Counted per process, in memory: a user behind a load balancer with N server processes may
hold up to N times the limit. That still bounds what one user can pin in any one process
(a pump, a layer channel and a send buffer per socket), which is what the limit is for.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["SocketSlots", "open_sockets"]

# The event loop of a server process is single-threaded: no lock is needed.
_open: Counter[Any] = Counter()


class SocketSlots:
    """One socket's claim on its user's slots: :meth:`take` at connect, :meth:`give_back`
    when it ends (idempotent, so every way out of a connection may call it)."""

    def __init__(self) -> None:
        self.key: Any = None

    def take(self, user: Any, limit: int | None) -> bool:
        """Count this socket for ``user``; False (nothing counted) if they are at ``limit``.

        Anonymous users are not counted: they are refused by the policy or read public
        channels, which a per-user count cannot bound anyway.
        """
        if user is None or not getattr(user, "is_authenticated", False):
            return True
        key = user.pk
        if limit is not None and _open[key] >= limit:
            return False
        _open[key] += 1
        self.key = key
        return True

    def give_back(self) -> None:
        if self.key is None:
            return
        _open[self.key] -= 1
        if _open[self.key] <= 0:
            del _open[self.key]
        self.key = None


def open_sockets(user_pk: Any) -> int:
    """Sockets ``user_pk`` holds in this process (for tests and diagnostics)."""
    return _open[user_pk]
