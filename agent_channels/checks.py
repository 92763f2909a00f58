"""System checks: settings that would make the log or the live wire misbehave.

Every check has an ID, a hint and a line in docs/checks.rst.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import connections
from django.utils.module_loading import import_string

from agent_channels.access import AccessPolicy
from agent_channels.conf import DEFAULTS, get_config

__all__ = [
    "check_access_policy",
    "check_access_recheck",
    "check_channel_layer",
    "check_database",
    "check_frame_limits",
    "check_limit_numbers",
    "check_persistent_connections",
    "check_quotas",
    "check_redis_timeouts",
    "check_settings",
    "check_user_channel_prefix",
]

IN_MEMORY = "channels.layers.InMemoryChannelLayer"
REDIS_CORE = "channels_redis.core.RedisChannelLayer"
LAYER_DEFAULTS = {
    IN_MEMORY: {"group_expiry": 86400, "capacity": 100},
    REDIS_CORE: {"group_expiry": 86400, "capacity": 100},
}


@register(Tags.compatibility)
def check_settings(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    user = getattr(settings, "AGENT_CHANNELS", None) or {}
    unknown = sorted(set(user) - set(DEFAULTS))
    if not unknown:
        return []
    return [
        Error(
            f"AGENT_CHANNELS has unknown keys: {', '.join(unknown)}.",
            hint=f"Remove them or fix their spelling; known keys are {', '.join(sorted(DEFAULTS))}.",
            id="agent_channels.E002",
        )
    ]


@register(Tags.compatibility)
def check_access_policy(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    path = get_config()["ACCESS_POLICY"]
    if not isinstance(path, str):
        return [
            Error(
                f"AGENT_CHANNELS['ACCESS_POLICY'] = {path!r} is not a dotted path.",
                hint="Give the dotted path of an agent_channels.access.AccessPolicy subclass, "
                "as a string.",
                id="agent_channels.E003",
            )
        ]
    try:
        policy = import_string(path)
    except ImportError as exc:
        return [
            Error(
                f"AGENT_CHANNELS['ACCESS_POLICY'] = {path!r} cannot be imported: {exc}.",
                hint="Give the dotted path of an agent_channels.access.AccessPolicy subclass.",
                id="agent_channels.E003",
            )
        ]
    if not (isinstance(policy, type) and issubclass(policy, AccessPolicy)):
        return [
            Error(
                f"AGENT_CHANNELS['ACCESS_POLICY'] = {path!r} is not an AccessPolicy subclass.",
                hint="Subclass agent_channels.access.AccessPolicy and override can_read/can_send.",
                id="agent_channels.E003",
            )
        ]
    return []


@register(Tags.compatibility)
def check_access_recheck(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    value = get_config()["ACCESS_RECHECK_SECONDS"]
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return []
    return [
        Error(
            f"AGENT_CHANNELS['ACCESS_RECHECK_SECONDS'] = {value!r} is not a number of seconds.",
            hint="Give a number >= 0, e.g. 30; 0 re-checks access on control frames only.",
            id="agent_channels.E006",
        )
    ]


#: Sizes and times of the wire and the runtime, and the smallest value each may take (0 turns
#: a limit, a retry or a refresh off; None is allowed where it means "no limit").
_NUMBERS: dict[str, tuple[float, bool]] = {
    "MAX_EVENT_BYTES": (0, False),
    "MAX_SENT_FRAME_BYTES": (0, False),
    "SERVER_MAX_MESSAGE_BYTES": (1, False),
    "MAX_PENDING_CONTROL": (1, False),
    "TOOL_TIME_LIMIT": (0, True),
    "CELERY_TIME_LIMIT_MARGIN": (0, False),
    "DB_RETRY_SECONDS": (0, False),
    "GROUP_REFRESH_SECONDS": (0, False),
    "COALESCE_MAX_WINDOW_MS": (0, False),
}


@register(Tags.compatibility)
def check_limit_numbers(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """E007: a size or time setting that is not a number in range."""
    config = get_config()
    errors: list[CheckMessage] = []
    for name, (low, none_ok) in _NUMBERS.items():
        value = config[name]
        whole = name.endswith("_BYTES") or name == "MAX_PENDING_CONTROL"
        number = isinstance(value, int if whole else int | float) and not isinstance(value, bool)
        if (value is None and none_ok) or (number and value >= low):
            continue
        kind = "a whole number" if whole else "a number"
        errors.append(
            Error(
                f"AGENT_CHANNELS[{name!r}] = {value!r} is not {kind} >= {low:g}"
                + (" or None." if none_ok else "."),
                hint=f"Give {kind} such as {DEFAULTS[name]!r} (the default)"
                + ("; 0 turns it off." if low == 0 else "."),
                id="agent_channels.E007",
            )
        )
    return errors


@register(Tags.security)
def check_user_channel_prefix(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    value = get_config()["USER_CHANNEL_PREFIX"]
    if value is None:
        return []
    try:
        per_user = isinstance(value, str) and value.format(user_id=1) != value.format(user_id=2)
    except (KeyError, IndexError, ValueError):
        per_user = False
    if per_user:
        return []
    return [
        Error(
            f"AGENT_CHANNELS['USER_CHANNEL_PREFIX'] = {value!r} does not give each user a "
            "namespace of their own.",
            hint='Use a string with "{user_id}" and no other fields, e.g. "user:{user_id}/", '
            "or None to let only operators create channels.",
            id="agent_channels.E301",
        )
    ]


#: Quota and throttle settings: positive numbers, or None/0 where that turns them off.
_LIMITS = {
    "MAX_ACTIVE_RUNS_PER_USER": "an integer >= 0, or None for no limit",
    "MAX_QUEUED_RUNS_PER_CHANNEL": "an integer >= 0, or None for no limit",
    "MAX_SOCKETS_PER_USER": "an integer >= 0, or None for no limit",
    "HTTP_RUNS_RATE": "requests per second >= 0 (0 turns the throttle off)",
    "HTTP_RUNS_BURST": "an integer >= 1",
    "HTTP_MESSAGES_RATE": "requests per second >= 0 (0 turns the throttle off)",
    "HTTP_MESSAGES_BURST": "an integer >= 1",
    "MAX_PAGE_BYTES": "an integer >= 1",
    "SOCKET_SLOT_SECONDS": "seconds > 0",
}


def _limit_ok(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if name.endswith("SECONDS"):
        return isinstance(value, int | float) and value > 0
    if "RATE" in name:
        return isinstance(value, int | float) and value >= 0
    if value is None:
        return name.startswith("MAX_") and name != "MAX_PAGE_BYTES"
    low = 1 if name.endswith("BURST") or name == "MAX_PAGE_BYTES" else 0
    return isinstance(value, int) and value >= low


@register(Tags.compatibility)
def check_quotas(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    config = get_config()
    errors: list[CheckMessage] = [
        Error(
            f"AGENT_CHANNELS[{name!r}] = {config[name]!r} is not a valid limit.",
            hint=f"Give {expected}.",
            id="agent_channels.E302",
        )
        for name, expected in _LIMITS.items()
        if not _limit_ok(name, config[name])
    ]
    if config["THROTTLE_CACHE"] not in settings.CACHES:
        errors.append(
            Error(
                f"AGENT_CHANNELS['THROTTLE_CACHE'] = {config['THROTTLE_CACHE']!r} is not an "
                "alias in CACHES.",
                hint="Name an alias of settings.CACHES (a shared cache such as Redis, so the "
                "throttles hold across processes).",
                id="agent_channels.E302",
            )
        )
    return errors


@register(Tags.compatibility)
def check_channel_layer(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    config = get_config()
    alias = config["CHANNEL_LAYER"]
    layers: dict[str, Any] = getattr(settings, "CHANNEL_LAYERS", None) or {}
    layer = layers.get(alias)
    if not layer:
        return [
            Error(
                f"CHANNEL_LAYERS has no {alias!r} layer: events are stored but never delivered live.",
                hint=(
                    f"Add CHANNEL_LAYERS = {{{alias!r}: {{'BACKEND': "
                    "'channels_redis.core.RedisChannelLayer', 'CONFIG': {'hosts': [{'address': "
                    "REDIS_URL, 'socket_timeout': 30}]}}}."
                ),
                id="agent_channels.E001",
            )
        ]
    backend = layer.get("BACKEND", "")
    messages: list[CheckMessage] = []
    if backend == IN_MEMORY and not settings.DEBUG:
        messages.append(
            Warning(
                "The in-memory channel layer cannot reach other processes: events published by a "
                "worker or another server process will not arrive live.",
                hint="Use channels_redis.core.RedisChannelLayer (or RedisPubSubChannelLayer) in "
                "production.",
                id="agent_channels.W001",
            )
        )
    defaults = LAYER_DEFAULTS.get(backend)
    if defaults is not None:
        layer_config = {**defaults, **(layer.get("CONFIG") or {})}
        group_expiry = layer_config["group_expiry"]
        if group_expiry < config["WEBSOCKET_TIMEOUT"]:
            messages.append(
                Warning(
                    f"The channel layer's group_expiry ({group_expiry} s) is shorter than "
                    f"WEBSOCKET_TIMEOUT ({config['WEBSOCKET_TIMEOUT']} s): long-lived sockets "
                    "silently stop receiving live events when their group membership expires.",
                    hint="Raise CHANNEL_LAYERS[...]['CONFIG']['group_expiry'] to at least the "
                    "server's websocket timeout, or lower AGENT_CHANNELS['WEBSOCKET_TIMEOUT'] "
                    "to match daphne's --websocket_timeout.",
                    id="agent_channels.W002",
                )
            )
        capacity = layer_config["capacity"]
        if capacity < config["EXPECTED_EVENT_RATE"]:
            messages.append(
                Warning(
                    f"The channel layer's capacity ({capacity}) holds less than one second of the "
                    f"expected event rate ({config['EXPECTED_EVENT_RATE']}/s): live frames will be "
                    "dropped and clients will fall back to reading the log.",
                    hint="Raise CHANNEL_LAYERS[...]['CONFIG']['capacity'] to at least "
                    "AGENT_CHANNELS['EXPECTED_EVENT_RATE'].",
                    id="agent_channels.W003",
                )
            )
    return messages


@register(Tags.database)
def check_database(
    app_configs: Sequence[Any] | None = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for alias in databases or ():
        connection = connections[alias]
        if connection.vendor != "sqlite":
            continue
        mode = (connection.settings_dict.get("OPTIONS") or {}).get("transaction_mode")
        if str(mode).upper() != "IMMEDIATE":
            messages.append(
                Warning(
                    f"SQLite database {alias!r} does not use transaction_mode 'IMMEDIATE': concurrent "
                    "publishers can fail with 'database is locked' instead of waiting their turn.",
                    hint=f"Set DATABASES[{alias!r}]['OPTIONS']['transaction_mode'] = 'IMMEDIATE'.",
                    id="agent_channels.W004",
                )
            )
    return messages


def _redis_default_socket_timeout() -> float | None:
    try:
        from redis import _defaults
    except ImportError:  # redis-py before 8 had no default: reads wait forever
        return None
    timeout: float | None = getattr(_defaults, "DEFAULT_SOCKET_TIMEOUT", None)
    return timeout


def _host_socket_timeout(host: Any, default: float | None) -> float | None:
    if isinstance(host, dict):
        if "socket_timeout" in host:
            value = host["socket_timeout"]
            return None if value is None else float(value)
        host = host.get("address", "")
    if isinstance(host, str):
        query = parse_qs(urlsplit(host).query)
        if "socket_timeout" in query:
            return float(query["socket_timeout"][-1])
    return default


@register(Tags.compatibility)
def check_redis_timeouts(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """redis-py 8 times out socket reads after 5 s by default, which is exactly how long
    channels-redis blocks in BZPOPMIN waiting for a message: idle consumers then die with
    ``TimeoutError: Timeout reading from ...`` (django/channels_redis#422)."""
    layers: dict[str, Any] = getattr(settings, "CHANNEL_LAYERS", None) or {}
    layer = layers.get(get_config()["CHANNEL_LAYER"]) or {}
    if layer.get("BACKEND") != REDIS_CORE:
        return []
    try:
        from channels_redis.core import RedisChannelLayer
    except ImportError:
        return []
    blocking = float(getattr(RedisChannelLayer, "brpop_timeout", 5))
    default = _redis_default_socket_timeout()
    hosts = (layer.get("CONFIG") or {}).get("hosts") or ["redis://localhost:6379"]
    for host in hosts:
        timeout = _host_socket_timeout(host, default)
        if timeout is not None and timeout <= blocking:
            return [
                Error(
                    f"The channel layer's Redis socket_timeout ({timeout:g} s) is not longer than "
                    f"channels-redis's blocking receive ({blocking:g} s): idle consumers will fail "
                    "with 'Timeout reading from' and drop their WebSockets.",
                    hint="Give each host as a dict with a longer timeout, e.g. "
                    "{'address': REDIS_URL, 'socket_timeout': 30}.",
                    id="agent_channels.E004",
                )
            ]
    return []


@register(Tags.compatibility)
def check_sse_keepalive(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    value = get_config()["SSE_KEEPALIVE_SECONDS"]
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 3600:
        return []
    return [
        Error(
            f"AGENT_CHANNELS['SSE_KEEPALIVE_SECONDS'] must be a number of seconds from 0 "
            f"to 3600 (exclusive of 0), not {value!r}.",
            # Zero would send keep-alives (and ask the database) in a busy loop.
            hint="Use 15 (the default), or a little less than your proxy's read timeout.",
            id="agent_channels.E005",
        )
    ]


@register(Tags.compatibility)
def check_frame_limits(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W020: client frames this app would accept that the server drops first."""
    config = get_config()
    ours, server = config["MAX_CLIENT_FRAME_BYTES"], config["SERVER_MAX_MESSAGE_BYTES"]
    numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (ours, server))
    if not numbers or ours < server:
        return []
    return [
        Warning(
            f"MAX_CLIENT_FRAME_BYTES ({ours}) is not below the server's largest WebSocket "
            f"message (SERVER_MAX_MESSAGE_BYTES = {server}): a frame between the two is "
            "dropped by the server, which closes the socket (1009) without the too_large "
            "error the client could act on.",
            hint="Lower AGENT_CHANNELS['MAX_CLIENT_FRAME_BYTES'], or raise the server's limit "
            "(daphne --websocket-max-message-size N, DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE under "
            "runserver) and set SERVER_MAX_MESSAGE_BYTES to match.",
            id="agent_channels.W020",
        )
    ]


@register(Tags.compatibility)
def check_persistent_connections(
    app_configs: Sequence[Any] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """W021: persistent database connections under an ASGI server, without a pool."""
    if not getattr(settings, "ASGI_APPLICATION", None):
        return []
    messages: list[CheckMessage] = []
    for alias, database in getattr(settings, "DATABASES", {}).items():
        age = database.get("CONN_MAX_AGE", 0)
        if "sqlite" in str(database.get("ENGINE", "")) or age == 0:
            continue
        if (database.get("OPTIONS") or {}).get("pool"):
            continue  # Django refuses a pool with CONN_MAX_AGE anyway
        messages.append(
            Warning(
                f"DATABASES[{alias!r}] keeps connections open (CONN_MAX_AGE = {age!r}) under "
                "ASGI: every thread that serves a request or a WebSocket keeps one of its own "
                "that nothing reuses, and a busy server exhausts max_connections.",
                hint=f'Set DATABASES[{alias!r}]["CONN_MAX_AGE"] = 0 and '
                f'DATABASES[{alias!r}]["OPTIONS"]["pool"] = {{"max_size": 10}} '
                '(Django 5.1+, pip install "psycopg[pool]"); see the deployment docs.',
                id="agent_channels.W021",
            )
        )
    return messages
