"""System checks for the runtime's settings (IDs agent_channels.E1xx)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register
from django.utils.module_loading import import_string

from agent_channels.conf import get_config
from agent_channels.runtime.api import POLICIES
from agent_channels.runtime.backends import RunBackend

__all__ = ["check_runtime_settings"]


@register(Tags.compatibility)
def check_runtime_settings(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    config = get_config()
    errors: list[CheckMessage] = []
    agents = config["AGENTS"]
    if not isinstance(agents, dict):
        errors.append(
            Error(
                "AGENT_CHANNELS['AGENTS'] must be a dict of agent name to dotted path.",
                hint='For example {"support": "myapp.agents.support"}.',
                id="agent_channels.E101",
            )
        )
    else:
        for name, path in agents.items():
            try:
                fn = import_string(path)
            except ImportError as exc:
                errors.append(
                    Error(
                        f"AGENT_CHANNELS['AGENTS'][{name!r}] = {path!r} cannot be imported: {exc}.",
                        hint="Give the dotted path of a function taking (ctx, input).",
                        id="agent_channels.E101",
                    )
                )
                continue
            if not callable(fn):
                errors.append(
                    Error(
                        f"AGENT_CHANNELS['AGENTS'][{name!r}] = {path!r} is not callable.",
                        hint="Give the dotted path of a function taking (ctx, input).",
                        id="agent_channels.E101",
                    )
                )
    backend = config["RUN_BACKEND"]
    if backend is not None:
        try:
            backend_class = import_string(backend)
        except ImportError as exc:
            backend_class = None
            errors.append(
                Error(
                    f"AGENT_CHANNELS['RUN_BACKEND'] = {backend!r} cannot be imported: {exc}.",
                    hint="Use agent_channels.runtime.backends.celery.CeleryBackend or "
                    "agent_channels.runtime.backends.inprocess.InProcessBackend, "
                    "or None to choose by CELERY_BROKER_URL.",
                    id="agent_channels.E102",
                )
            )
        if backend_class is not None and not (
            isinstance(backend_class, type) and issubclass(backend_class, RunBackend)
        ):
            errors.append(
                Error(
                    f"AGENT_CHANNELS['RUN_BACKEND'] = {backend!r} is not a RunBackend subclass.",
                    hint="Subclass agent_channels.runtime.backends.RunBackend.",
                    id="agent_channels.E102",
                )
            )
    if config["DOUBLE_TEXTING"] not in POLICIES:
        errors.append(
            Error(
                f"AGENT_CHANNELS['DOUBLE_TEXTING'] = {config['DOUBLE_TEXTING']!r} is not a policy.",
                hint=f"Use one of {', '.join(repr(p) for p in POLICIES)}.",
                id="agent_channels.E103",
            )
        )
    if config["OPENAI_API"] not in ("chat_completions", "responses"):
        errors.append(
            Error(
                f"AGENT_CHANNELS['OPENAI_API'] = {config['OPENAI_API']!r} is not a model API.",
                hint="Use 'chat_completions' or 'responses'.",
                id="agent_channels.E104",
            )
        )
    if not isinstance(config["OPENAI_BACKGROUND"], bool):
        errors.append(
            Error(
                f"AGENT_CHANNELS['OPENAI_BACKGROUND'] = {config['OPENAI_BACKGROUND']!r} "
                "is not a bool.",
                hint="Use True to run Responses API calls in background mode, False not to.",
                id="agent_channels.E105",
            )
        )
    return errors
