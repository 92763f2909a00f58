"""The runtime: agents as Python functions, executed durably on Celery or in-process.

See docs/runtime.rst.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = [
    "AgentForbidden",
    "Cancelled",
    "ChatResult",
    "Interrupted",
    "QuotaExceeded",
    "RunBackend",
    "RunConflict",
    "RunContext",
    "RunError",
    "RunForbidden",
    "Tool",
    "UnknownAgent",
    "agent",
    "start_run",
    "tool",
]

_EXPORTS = {
    "AgentForbidden": "agent_channels.runtime.errors",
    "QuotaExceeded": "agent_channels.runtime.errors",
    "Cancelled": "agent_channels.runtime.errors",
    "ChatResult": "agent_channels.runtime.calls",
    "Interrupted": "agent_channels.runtime.errors",
    "RunConflict": "agent_channels.runtime.errors",
    "RunBackend": "agent_channels.runtime.backends",
    "RunContext": "agent_channels.runtime.context",
    "RunError": "agent_channels.runtime.errors",
    "RunForbidden": "agent_channels.runtime.errors",
    "Tool": "agent_channels.runtime.tools",
    "UnknownAgent": "agent_channels.runtime.errors",
    "agent": "agent_channels.runtime.registry",
    "start_run": "agent_channels.runtime.api",
    "tool": "agent_channels.runtime.tools",
}

if TYPE_CHECKING:
    from agent_channels.runtime.api import start_run
    from agent_channels.runtime.backends import RunBackend
    from agent_channels.runtime.calls import ChatResult
    from agent_channels.runtime.context import RunContext
    from agent_channels.runtime.errors import (
        AgentForbidden,
        Cancelled,
        Interrupted,
        QuotaExceeded,
        RunConflict,
        RunError,
        RunForbidden,
        UnknownAgent,
    )
    from agent_channels.runtime.registry import agent
    from agent_channels.runtime.tools import Tool, tool


def __getattr__(name: str) -> Any:
    # Lazy, so that `from agent_channels.runtime import agent` in an app's agents.py
    # does not import models before the app registry is ready.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent_channels.runtime' has no attribute {name!r}")
    return getattr(import_module(module), name)
