"""agent-channels: persistent, resumable, named channels for LLM agent runs in Django.

The public API is importable from here; names load lazily so that importing the
package does not require Django's app registry to be ready.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

__all__ = [
    "AccessPolicy",
    "AsyncMessageStream",
    "InvalidChannelName",
    "InvalidEvent",
    "MessageStream",
    "OwnerAccessPolicy",
    "apublish",
    "new_channel_name",
    "publish",
    "stream_message",
]

_EXPORTS = {
    "AccessPolicy": "agent_channels.access",
    "AsyncMessageStream": "agent_channels.channel.publishing",
    "InvalidChannelName": "agent_channels.channel.names",
    "InvalidEvent": "agent_channels.channel.log",
    "MessageStream": "agent_channels.channel.publishing",
    "OwnerAccessPolicy": "agent_channels.access",
    "apublish": "agent_channels.channel.publishing",
    "new_channel_name": "agent_channels.access",
    "publish": "agent_channels.channel.publishing",
    "stream_message": "agent_channels.channel.publishing",
}

if TYPE_CHECKING:
    from agent_channels.access import AccessPolicy, OwnerAccessPolicy, new_channel_name
    from agent_channels.channel.log import InvalidEvent
    from agent_channels.channel.names import InvalidChannelName
    from agent_channels.channel.publishing import (
        AsyncMessageStream,
        MessageStream,
        apublish,
        publish,
        stream_message,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_channels' has no attribute {name!r}")
    return getattr(import_module(module), name)
