"""Shared fixtures: real servers when the configuration asks for them.

When PostgreSQL or Redis is configured (AGCH_DB=postgres, AGCH_LAYER=redis) but
unreachable, the session stops with a clear reason under CI=true, and tests that
need it skip otherwise.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest
from django.conf import settings


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=2):
            return True
    except OSError:
        return False


def pytest_configure(config: pytest.Config) -> None:
    needed = []
    if settings.DB_KIND == "postgres":
        needed.append(("PostgreSQL", settings.POSTGRES_URL))
    if settings.LAYER_KIND == "redis":
        needed.append(("Redis", settings.REDIS_URL))
    for name, url in needed:
        if not _reachable(url):
            message = f"{name} is configured but unreachable at {url}"
            if os.environ.get("CI") == "true":
                raise pytest.UsageError(message + " (CI=true: failing instead of skipping)")
            config.stash[_UNREACHABLE] = message


_UNREACHABLE = pytest.StashKey[str]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = config.stash.get(_UNREACHABLE, None)
    if reason:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=reason))
    if settings.LAYER_KIND != "redis":
        skip = pytest.mark.skip(reason="needs the Redis channel layer (AGCH_LAYER=redis)")
        for item in items:
            if "redis" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _release_background_connections(django_db_setup, django_db_blocker):
    """Background threads hold DB connections; the test database cannot be dropped under them."""
    yield
    from agent_channels.channel.publishing import release_connections
    from agent_channels.runtime.backends import reset_backend
    from agent_channels.runtime.monitor import stop_monitor

    reset_backend()
    stop_monitor()
    release_connections()


# -- the runtime's fixtures ----------------------------------------------------------------

from collections.abc import Iterator  # noqa: E402

from .llm_server import LLMServer  # noqa: E402


@pytest.fixture(scope="session")
def llm_server() -> Iterator[LLMServer]:
    """The fake model server; workers started by the tests inherit its URL."""
    server = LLMServer()
    old = {k: os.environ.get(k) for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    os.environ["OPENAI_BASE_URL"] = server.base_url
    os.environ["OPENAI_API_KEY"] = "test-key"
    yield server
    server.stop()
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def llm(llm_server: LLMServer) -> LLMServer:
    llm_server.reset()
    return llm_server


@pytest.fixture
def inprocess_runtime() -> Iterator[None]:
    """The in-process backend, drained after the test so no run outlives its database."""
    from agent_channels.runtime.backends import reset_backend
    from agent_channels.runtime.monitor import stop_monitor

    reset_backend()
    yield
    # A run that ends starts the next queued run of its channel, on a backend built anew if
    # the old one is closing: close until no run is left to start one.
    from agent_channels.runtime.backends import _backend

    for _ in range(50):
        reset_backend()
        if _backend.peek() is None:
            break
    # Its heartbeats and reaper would query a database the next test may not allow.
    stop_monitor()
    # A timed delta flush of a run that just ended may still hold a connection: let it go
    # before the database is flushed for the next test.
    from agent_channels.channel.publishing import release_connections

    release_connections()


@pytest.fixture(autouse=True)
def _layer_instance_per_test() -> Iterator[None]:
    """channels-redis keeps receive state (locks, buffers) on the layer instance, bound to
    the event loop that used it, and each async test runs on a loop of its own: every test
    gets an instance of its own, as every server process has. The in-memory layer is kept,
    since it *is* the messages (background threads hold it)."""
    yield
    from channels.layers import InMemoryChannelLayer, channel_layers

    for alias, layer in list(channel_layers.backends.items()):
        if not isinstance(layer, InMemoryChannelLayer):
            channel_layers.backends.pop(alias, None)
