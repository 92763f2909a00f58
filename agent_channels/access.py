"""Who may read a channel and who may send to it.

The policy is a class named by the ``ACCESS_POLICY`` setting. Its methods are
synchronous and may query the database; consumers call them from a thread.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from agent_channels.conf import get_config
from agent_channels.models import Channel

__all__ = ["AccessPolicy", "OwnerAccessPolicy", "get_access_policy"]


class AccessPolicy:
    """Base class: denies everything. Override the two methods."""

    def can_read(self, user: Any, channel: str) -> bool:
        """May ``user`` follow ``channel`` (WebSocket, HTTP events)?"""
        return False

    def can_send(self, user: Any, channel: str) -> bool:
        """May ``user`` send input, interrupt and cancel frames to ``channel``?"""
        return False

    def can_create(self, user: Any, channel: str) -> bool:
        """May ``user`` start a run on ``channel``, which does not exist yet (and own it)?"""
        return False


class OwnerAccessPolicy(AccessPolicy):
    """The default: users read and send on the channels they own; anonymous users nothing.

    Two model permissions open other users' channels, so operators are scoped like the
    rest of Django (grant them to a group): ``agent_channels.view_all_channels`` to follow
    any channel and ``agent_channels.control_all_runs`` to send input, interrupt and cancel
    to any channel. Superusers have every permission; ``is_staff`` alone grants nothing here.
    """

    #: The permission that lets a user follow every channel.
    read_all_permission = "agent_channels.view_all_channels"
    #: The permission that lets a user send control frames to every channel.
    send_all_permission = "agent_channels.control_all_runs"

    def _allowed(self, user: Any, channel: str, permission: str) -> bool:
        if user is None or not getattr(user, "is_authenticated", False):
            return False
        if not getattr(user, "is_active", True):
            return False
        if Channel.objects.filter(name=channel, owner_id=user.pk).exists():
            return True
        # Only for other users' channels, so owners pay no permission queries; has_perm
        # caches the permissions on the user object (once per request or per socket check).
        return bool(user.has_perm(permission))

    def can_read(self, user: Any, channel: str) -> bool:
        return self._allowed(user, channel, self.read_all_permission)

    def can_send(self, user: Any, channel: str) -> bool:
        return self._allowed(user, channel, self.send_all_permission)

    def can_create(self, user: Any, channel: str) -> bool:
        return bool(
            user is not None
            and getattr(user, "is_authenticated", False)
            and getattr(user, "is_active", True)
        )


@cache
def get_access_policy() -> AccessPolicy:
    """An instance of the configured policy class (reset when settings change)."""
    configured = get_config()["ACCESS_POLICY"]
    policy_class = import_string(configured) if isinstance(configured, str) else configured
    if not (isinstance(policy_class, type) and issubclass(policy_class, AccessPolicy)):
        # Check agent_channels.E003 reports this at startup; never fall open at run time.
        return AccessPolicy()
    policy: AccessPolicy = policy_class()
    return policy


def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "AGENT_CHANNELS":
        get_access_policy.cache_clear()


setting_changed.connect(_reset_on_setting_changed)
