"""Twelve-factor settings helpers: deployment comes from the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit


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


def channel_layers(redis_url: str | None) -> dict[str, Any]:
    """channels-redis when REDIS_URL is set, else the in-memory layer (one process only)."""
    if redis_url:
        return {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    # socket_timeout: redis-py 8 defaults to 5 s, channels-redis blocks for
                    # 5 s per receive; equal timeouts kill idle sockets (check E004).
                    "hosts": [{"address": redis_url, "socket_timeout": 30}],
                    "capacity": 1000,
                    "group_expiry": 86400,
                },
            }
        }
    return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer",
                        "CONFIG": {"capacity": 1000}}}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]
