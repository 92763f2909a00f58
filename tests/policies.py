from typing import Any

from agent_channels.access import AccessPolicy


class ReadOnlyPolicy(AccessPolicy):
    def can_read(self, user: Any, channel: str) -> bool:
        return bool(user.is_authenticated)
