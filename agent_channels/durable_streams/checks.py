"""System checks for the Durable Streams and AG-UI settings (docs/checks.rst, E2xx)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register
from django.utils.module_loading import import_string

from agent_channels.conf import get_config
from agent_channels.durable_streams.access import StreamPolicy

__all__ = ["check_limits", "check_stream_policy"]

#: Settings that must be positive numbers: (key, integers only).
POSITIVE = (
    ("DURABLE_STREAMS_LONG_POLL_SECONDS", False),
    ("DURABLE_STREAMS_SSE_SECONDS", False),
    ("DURABLE_STREAMS_MAX_APPEND_BYTES", True),
    ("DURABLE_STREAMS_READ_BYTES", True),
    ("AGUI_MAX_INPUT_BYTES", True),
)


@register(Tags.compatibility)
def check_stream_policy(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    path = get_config()["DURABLE_STREAMS_POLICY"]
    hint = (
        "Give the dotted path of an agent_channels.durable_streams.access.StreamPolicy "
        "subclass, as a string."
    )
    problem = None
    if not isinstance(path, str):
        problem = "is not a dotted path"
    else:
        try:
            policy = import_string(path)
        except ImportError as exc:
            problem = f"cannot be imported: {exc}"
        else:
            if not (isinstance(policy, type) and issubclass(policy, StreamPolicy)):
                problem = "is not a StreamPolicy subclass"
    if problem is None:
        return []
    return [
        Error(
            f"AGENT_CHANNELS['DURABLE_STREAMS_POLICY'] = {path!r} {problem}.",
            hint=hint,
            id="agent_channels.E201",
        )
    ]


@register(Tags.compatibility)
def check_limits(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    config = get_config()
    errors: list[CheckMessage] = []
    for key, integer in POSITIVE:
        value = config[key]
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
            what = "a positive integer" if integer else "a positive number"
            errors.append(
                Error(
                    f"AGENT_CHANNELS[{key!r}] = {value!r} is not {what}.",
                    hint=f"Set it to {what} or remove it to use the default.",
                    id="agent_channels.E202",
                )
            )
    origins = config["DURABLE_STREAMS_CORS_ORIGINS"]
    if origins != "*" and not (
        isinstance(origins, list | tuple) and all(isinstance(o, str) for o in origins)
    ):
        errors.append(
            Error(
                f"AGENT_CHANNELS['DURABLE_STREAMS_CORS_ORIGINS'] = {origins!r} is neither a "
                "list of origins nor '*'.",
                hint='Give origins such as ["https://app.example.com"], or "*" for any.',
                id="agent_channels.E203",
            )
        )
    return errors
