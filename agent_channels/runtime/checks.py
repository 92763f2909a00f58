"""System checks for the runtime's settings (IDs agent_channels.E1xx)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import connections
from django.utils.module_loading import import_string

from agent_channels.conf import get_config
from agent_channels.runtime.api import POLICIES
from agent_channels.runtime.backends import RunBackend, default_backend_path

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
    errors += _check_capacity(config)
    errors += _check_liveness(config)
    return errors


#: In-process threads past which a connection per thread crowds PostgreSQL (100 by default).
UNPOOLED_THREADS = 20


def _check_capacity(config: dict[str, Any]) -> list[CheckMessage]:
    workers = config["INPROCESS_WORKERS"]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        return [
            Error(
                f"AGENT_CHANNELS['INPROCESS_WORKERS'] = {workers!r} is not a positive integer.",
                hint="Give the number of runs one process executes at once, e.g. 100.",
                id="agent_channels.E110",
            )
        ]
    inprocess = "agent_channels.runtime.backends.inprocess.InProcessBackend"
    if (config["RUN_BACKEND"] or default_backend_path()) != inprocess:
        return []
    database = connections.settings["default"]
    unpooled_postgres = "postgresql" in database.get("ENGINE", "") and not (
        database.get("OPTIONS") or {}
    ).get("pool")
    if unpooled_postgres and workers > UNPOOLED_THREADS:
        return [
            Warning(
                f"INPROCESS_WORKERS = {workers} threads on PostgreSQL without a connection "
                "pool: each busy run thread keeps a connection of its own.",
                hint='Add DATABASES["default"]["OPTIONS"]["pool"] = {"max_size": 10} '
                '(pip install "psycopg[pool]", CONN_MAX_AGE = 0), or lower INPROCESS_WORKERS.',
                id="agent_channels.W110",
            )
        ]
    return []


def _check_liveness(config: dict[str, Any]) -> list[CheckMessage]:
    beat, stale = config["HEARTBEAT_SECONDS"], config["STALE_AFTER_SECONDS"]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (beat, stale))
    if not numbers or beat <= 0 or stale < 3 * beat:
        return [
            Error(
                f"AGENT_CHANNELS['STALE_AFTER_SECONDS'] = {stale!r} is not at least three "
                f"heartbeats (HEARTBEAT_SECONDS = {beat!r}): a live worker's runs would be "
                "taken for dead and started twice.",
                hint="Use positive numbers with STALE_AFTER_SECONDS >= 3 * HEARTBEAT_SECONDS, "
                "e.g. 1.5 and 6.0.",
                id="agent_channels.E111",
            )
        ]
    return []
