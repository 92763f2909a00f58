"""Who may read a channel, send to it, create it, and start which agents on it.

The policy is a class named by the ``ACCESS_POLICY`` setting. Its methods are
synchronous and may query the database; consumers call them from a thread.
"""

from __future__ import annotations

import secrets
from functools import cache
from typing import Any

from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from agent_channels.channel.names import MAX_NAME_LENGTH, validate_name
from agent_channels.conf import get_config
from agent_channels.models import Channel

__all__ = ["AccessPolicy", "OwnerAccessPolicy", "get_access_policy", "new_channel_name"]


def _active_user(user: Any) -> bool:
    return bool(
        user is not None
        and getattr(user, "is_authenticated", False)
        and getattr(user, "is_active", True)
    )


class AccessPolicy:
    """Base class: denies reading, sending and creating. Override what you allow."""

    def can_read(self, user: Any, channel: str) -> bool:
        """May ``user`` follow ``channel`` (WebSocket, HTTP events)?"""
        return False

    def can_send(self, user: Any, channel: str) -> bool:
        """May ``user`` send input, interrupt and cancel frames to ``channel``?"""
        return False

    def can_create(self, user: Any, channel: str) -> bool:
        """May ``user`` start a run on ``channel``, which does not exist yet (and own it)?

        Answer from the name alone, never from whether some other channel exists: the
        HTTP API gives the same answer to a refused name as to another user's channel.
        """
        return False

    def can_run(self, user: Any, channel: str, agent: str) -> bool:
        """May ``user`` start ``agent`` on ``channel``?

        Asked only after :meth:`can_send` (or :meth:`can_create` for a new channel) allowed
        the start, so the default lets anyone who may send start any registered agent.
        Override it to keep expensive agents (or models) to some users.
        """
        return True

    def user_prefix(self, user: Any) -> str | None:
        """The namespace of channel names ``user`` may create, or None (see
        :func:`new_channel_name`)."""
        return None


class OwnerAccessPolicy(AccessPolicy):
    """The default: users read and send on the channels they own; anonymous users nothing.

    A user creates (and so owns) only channels in their own namespace: names starting with
    ``USER_CHANNEL_PREFIX`` formatted with their primary key (``"user:42/"`` by default),
    which is where :func:`new_channel_name` puts new names. Nobody can claim a name
    another user's workflow will use, and a name outside one's namespace gets the same
    refusal whether it exists or not.

    Two model permissions open other users' channels, so operators are scoped like the
    rest of Django (grant them to a group): ``agent_channels.view_all_channels`` to follow
    any channel and ``agent_channels.control_all_runs`` to send input, interrupt and cancel
    to any channel and to start runs on any name. Superusers have every permission;
    ``is_staff`` alone grants nothing here.
    """

    #: The permission that lets a user follow every channel.
    read_all_permission = "agent_channels.view_all_channels"
    #: The permission that lets a user send control frames to (and create) every channel.
    send_all_permission = "agent_channels.control_all_runs"

    def _allowed(self, user: Any, channel: str, permission: str) -> bool:
        if not _active_user(user):
            return False
        if getattr(user, "is_superuser", False):
            return True  # has_perm's own answer for an active superuser, without the query
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
        if not _active_user(user):
            return False
        prefix = self.user_prefix(user)
        if prefix and channel.startswith(prefix) and len(channel) > len(prefix):
            return True
        return bool(user.has_perm(self.send_all_permission))

    def user_prefix(self, user: Any) -> str | None:
        template = get_config()["USER_CHANNEL_PREFIX"]
        if not template or not _active_user(user):
            return None
        return str(template).format(user_id=user.pk)


def new_channel_name(user: Any, label: str = "") -> str:
    """A fresh channel name that ``user`` may create: their namespace, ``label``, and 128
    random bits.

    Hand it out (in a redirect, a form, a URL your page builds) and let the user's first
    run create the channel: the name is in the namespace the policy's ``can_create``
    allows (:meth:`AccessPolicy.user_prefix`) and cannot be guessed by anyone else. Under
    a policy without namespaces the name is only unguessable, and ``can_create`` decides.
    """
    prefix = get_access_policy().user_prefix(user) or ""
    name = f"{prefix}{label}{secrets.token_urlsafe(16)}"
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"The prefix and label leave no room in {MAX_NAME_LENGTH} characters.")
    return validate_name(name)


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
