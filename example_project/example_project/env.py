"""Twelve-factor settings helpers: deployment comes from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured


def database_from_url(
    url: str | None, sqlite_path: Path, pool_size: int | None = None
) -> dict[str, Any]:
    """``postgres://user:pass@host:port/name`` or ``sqlite:///path``; unset means SQLite.

    ``pool_size``: PostgreSQL connections each process may open, from Django's psycopg
    pool (what a daphne process or a worker carrying many runs in threads needs); None
    opens a connection per request or run step instead (never a persistent one: ASGI).
    """
    if not url:
        return sqlite_database(sqlite_path)
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = unquote(parts.path[1:]) if parts.path.startswith("/") else parts.path
        return sqlite_database(Path(path or sqlite_path))
    if parts.scheme in ("postgres", "postgresql", "pgsql"):
        database: dict[str, Any] = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "OPTIONS": dict(parse_qsl(parts.query)),
            # Never persistent under ASGI (check agent_channels.W021): each daphne thread
            # would keep a connection of its own that nothing reuses.
            "CONN_MAX_AGE": 0,
        }
        if pool_size:
            # The pool replaces persistent connections (Django refuses both at once).
            # timeout: how long a thread waits for a free connection before an error.
            database["OPTIONS"]["pool"] = {"min_size": 1, "max_size": pool_size, "timeout": 30}
        return database
    raise ValueError(f"Unsupported DATABASE_URL scheme {parts.scheme!r}; use postgres:// or sqlite:///")


def sqlite_database(path: Path) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        # IMMEDIATE: writers queue for the lock instead of failing (check agent_channels.W004).
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }


def redis_sentinels(value: str | None) -> list[tuple[str, int]]:
    """``REDIS_SENTINELS="10.0.0.5:26379,10.0.0.6:26379"`` as ``[(host, port), ...]``."""
    sentinels = []
    for item in (value or "").split(","):
        if item.strip():
            host, _, port = item.strip().rpartition(":")
            sentinels.append((host.strip("[]"), int(port)))
    return sentinels


def channel_layers(
    redis_url: str | None,
    sentinels: list[tuple[str, int]] | None = None,
    master_name: str = "mymaster",
    db: int = 0,
    *,
    pubsub: bool = False,
) -> dict[str, Any]:
    """channels-redis when REDIS_URL (or Sentinel) is set, else the in-memory layer (one
    process only).

    ``sentinels``: Redis Sentinel addresses; the layer then asks them for the current
    primary of ``master_name`` (database ``db``) and follows a failover by itself.
    ``pubsub``: channels-redis's PUB/SUB layer instead of the core one (lower latency for
    servers carrying many busy sockets; docs/deployment.rst compares them).
    """
    if sentinels:
        host: dict[str, Any] = {
            "sentinels": sentinels,
            "master_name": master_name,
            "db": db,
            # A dead sentinel must not hold a reconnect: ask the next one.
            "sentinel_kwargs": {"socket_timeout": 2},
        }
    elif redis_url:
        host = {"address": redis_url}
    else:
        return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer",
                            "CONFIG": {"capacity": 1000}}}
    if pubsub:
        # No capacity or group expiry: PUB/SUB stores nothing (the log heals what it drops).
        return {
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {"hosts": [{**host, "socket_timeout": 30}]},
            }
        }
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # socket_timeout: redis-py 8 defaults to 5 s, channels-redis blocks for
                # 5 s per receive; equal timeouts kill idle sockets (check E004).
                "hosts": [{**host, "socket_timeout": 30}],
                "capacity": 1000,
                "group_expiry": 86400,
            },
        }
    }


def celery_sentinel_broker(
    sentinels: list[tuple[str, int]], master_name: str = "mymaster", db: int = 0
) -> tuple[str, dict[str, Any]]:
    """Celery's ``broker_url`` and the ``broker_transport_options`` entries that reach the
    Redis primary through Sentinel (kombu's ``sentinel://`` transport)."""
    url = ";".join(f"sentinel://{host}:{port}/{db}" for host, port in sentinels)
    return url, {"master_name": master_name, "sentinel_kwargs": {"socket_timeout": 2}}


#: The example's public development key: anyone can read it here, so it is accepted only
#: with DEBUG on (``python3 dev.py serve`` or ``DJANGO_DEBUG=1``).
PUBLIC_SECRET_KEY = "example-project-insecure-key"


def debug_and_secret_key(environ: Mapping[str, str]) -> tuple[bool, str]:
    """``(DEBUG, SECRET_KEY)`` from ``DJANGO_DEBUG`` and ``DJANGO_SECRET_KEY``.

    DEBUG is off unless ``DJANGO_DEBUG=1`` (``dev.py serve`` sets it). With DEBUG off the
    secret key must come from the environment and must not be the public one: the project
    refuses to start otherwise, rather than sign sessions with a key everyone knows.
    """
    debug = environ.get("DJANGO_DEBUG", "0") == "1"
    key = environ.get("DJANGO_SECRET_KEY", "")
    if debug:
        return True, key or PUBLIC_SECRET_KEY
    if not key or key == PUBLIC_SECRET_KEY:
        raise ImproperlyConfigured(
            "Set DJANGO_SECRET_KEY to a secret value (python -c \"from django.core.management"
            ".utils import get_random_secret_key as k; print(k())\"), or DJANGO_DEBUG=1 on "
            "your own machine: with DEBUG off the example project refuses its public key."
        )
    return False, key


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]
