"""Who may read and write Durable Streams that are not agent channels.

Agent channels read as streams (``channels/<name>``) follow ``ACCESS_POLICY`` instead.
The class is named by ``AGENT_CHANNELS["DURABLE_STREAMS_POLICY"]``; its methods are
synchronous and may query the database (the views call them from a thread).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from agent_channels.conf import get_config

__all__ = ["OpenStreamPolicy", "StaffStreamPolicy", "StreamPolicy", "get_stream_policy"]


class StreamPolicy:
    """Base class: denies everything. Override the two methods."""

    def can_read(self, user: Any, path: str) -> bool:
        """May ``user`` read (GET, HEAD) the stream at ``path``, or fork from it?"""
        return False

    def can_write(self, user: Any, path: str) -> bool:
        """May ``user`` create, append to, close or delete the stream at ``path``?"""
        return False


class StaffStreamPolicy(StreamPolicy):
    """The default: active staff users may do everything, nobody else anything."""

    def _staff(self, user: Any) -> bool:
        return bool(
            user is not None
            and getattr(user, "is_authenticated", False)
            and getattr(user, "is_active", True)
            and getattr(user, "is_staff", False)
        )

    def can_read(self, user: Any, path: str) -> bool:
        return self._staff(user)

    def can_write(self, user: Any, path: str) -> bool:
        return self._staff(user)


class OpenStreamPolicy(StreamPolicy):
    """Anyone may do anything: for tests, demos and servers behind their own gateway."""

    def can_read(self, user: Any, path: str) -> bool:
        return True

    def can_write(self, user: Any, path: str) -> bool:
        return True


@cache
def get_stream_policy() -> StreamPolicy:
    configured = get_config()["DURABLE_STREAMS_POLICY"]
    policy_class = import_string(configured) if isinstance(configured, str) else configured
    if not (isinstance(policy_class, type) and issubclass(policy_class, StreamPolicy)):
        # Never fall open on a misconfiguration.
        return StreamPolicy()
    policy: StreamPolicy = policy_class()
    return policy


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "AGENT_CHANNELS":
        get_stream_policy.cache_clear()
