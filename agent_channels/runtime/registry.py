"""Agents by name: the ``@agent`` decorator and the ``AGENTS`` setting."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from django.utils.module_loading import autodiscover_modules, import_string

from agent_channels.conf import get_config
from agent_channels.runtime.errors import UnknownAgent

if TYPE_CHECKING:
    from agent_channels.runtime.context import RunContext

__all__ = ["AgentFunction", "agent", "agent_names", "agent_options", "autodiscover", "get_agent"]

AgentFunction = Callable[["RunContext", Any], Any]
F = TypeVar("F", bound=AgentFunction)

_registry: dict[str, AgentFunction] = {}
_options: dict[str, dict[str, Any]] = {}
_lock = threading.Lock()
_discovered = False


def agent(name: str, *, api: str | None = None, background: bool | None = None) -> Callable[[F], F]:
    """Register the decorated function as the agent ``name``.

    The function is called as ``fn(ctx, input)`` and returns the run's output (any JSON
    value). Put agents in an installed app's ``agents.py``: those modules are imported
    when Django starts.

    ``api`` chooses the model API of the agent's ``ctx.chat()`` calls
    (``"chat_completions"`` or ``"responses"``) and ``background`` whether Responses API
    calls run in background mode; ``None`` leaves it to the ``OPENAI_API`` and
    ``OPENAI_BACKGROUND`` settings.
    """
    if not isinstance(name, str) or not 1 <= len(name) <= 200:
        raise ValueError("An agent name must be a string of 1 to 200 characters.")
    if api not in (None, "chat_completions", "responses"):
        raise ValueError(f'api={api!r}: use "chat_completions" or "responses".')
    if background not in (None, True, False):
        raise ValueError(f"background={background!r}: use True, False or None.")
    options = {k: v for k, v in (("api", api), ("background", background)) if v is not None}

    def register(fn: F) -> F:
        with _lock:
            _registry[name] = fn
            _options[name] = options
        return fn

    return register


def autodiscover() -> None:
    """Import every installed app's ``agents`` module (idempotent)."""
    global _discovered
    if not _discovered:
        autodiscover_modules("agents")
        _discovered = True


def get_agent(name: str) -> AgentFunction:
    """The agent registered as ``name``; raises :class:`UnknownAgent`."""
    configured: dict[str, str] = get_config()["AGENTS"]
    if name in configured:
        try:
            fn: AgentFunction = import_string(configured[name])
        except ImportError as exc:
            raise UnknownAgent(
                f"AGENT_CHANNELS['AGENTS'][{name!r}] = {configured[name]!r} cannot be imported: "
                f"{exc}"
            ) from exc
        return fn
    autodiscover()
    with _lock:
        found = _registry.get(name)
    if found is None:
        raise UnknownAgent(f"No agent is registered as {name!r}.")
    return found


def agent_options(name: str) -> dict[str, Any]:
    """What ``@agent(name, ...)`` chose for the agent (``api``, ``background``), if anything."""
    with _lock:
        return dict(_options.get(name, {}))


def agent_names() -> list[str]:
    """Every agent name known to this process."""
    autodiscover()
    with _lock:
        names = set(_registry)
    return sorted(names | set(get_config()["AGENTS"]))
