from typing import Any

from agent_channels.access import AccessPolicy, OwnerAccessPolicy


class ReadOnlyPolicy(AccessPolicy):
    def can_read(self, user: Any, channel: str) -> bool:
        return bool(user.is_authenticated)


class NoClaimsPolicy(OwnerAccessPolicy):
    """The default, except that users may not create channels by naming them."""

    def can_create(self, user: Any, channel: str) -> bool:
        return False


class NoEchoPolicy(OwnerAccessPolicy):
    """The default, except that nobody may start the ``echo`` agent."""

    def can_run(self, user: Any, channel: str, agent: str) -> bool:
        return agent != "echo"


class OpenNoEchoPolicy(AccessPolicy):
    """Anyone (anonymous users too) may read, send and create, but not run ``echo``."""

    def can_read(self, user: Any, channel: str) -> bool:
        return True

    def can_send(self, user: Any, channel: str) -> bool:
        return True

    def can_create(self, user: Any, channel: str) -> bool:
        return True

    def can_run(self, user: Any, channel: str, agent: str) -> bool:
        return agent != "echo"
