from typing import Any

from agent_channels.access import AccessPolicy, OwnerAccessPolicy


class ReadOnlyPolicy(AccessPolicy):
    def can_read(self, user: Any, channel: str) -> bool:
        return bool(user.is_authenticated)


class NoClaimsPolicy(OwnerAccessPolicy):
    """The default, except that users may not create channels by naming them."""

    def can_create(self, user: Any, channel: str) -> bool:
        return False
