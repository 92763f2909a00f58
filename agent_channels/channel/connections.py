"""Database connections of threads that mostly wait.

A run spends most of its life waiting on a model; with a thread per run, a connection
held per thread would exhaust PostgreSQL (100 connections by default) long before the
threads run out. With Django's connection pool (``OPTIONS: {"pool": {...}}``, Django
5.1+) a thread gives its connection back to the pool after each write instead, so a
worker process needs only as many connections as it has writes in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

from django.db import DEFAULT_DB_ALIAS, Error, InterfaceError, OperationalError, connections

from agent_channels.conf import get_config

__all__ = ["TRANSIENT_ERRORS", "is_pooled", "release", "retrying"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What a lost connection or a database that is briefly away raises: worth a retry on a
#: fresh connection (a wrong statement raises something else, e.g. IntegrityError).
TRANSIENT_ERRORS = (OperationalError, InterfaceError)


def is_pooled(using: str = DEFAULT_DB_ALIAS) -> bool:
    """True when ``using`` hands out connections from a psycopg pool."""
    options = connections[using].settings_dict.get("OPTIONS") or {}
    return bool(options.get("pool"))


def release(using: str = DEFAULT_DB_ALIAS) -> None:
    """Give this thread's connection back to the pool between writes.

    Does nothing inside a transaction (the connection is the transaction) and without a
    pool (closing would mean a new TCP connection and login for the next write).
    """
    connection = connections[using]
    if connection.connection is None or connection.in_atomic_block or not is_pooled(using):
        return
    connection.close()


def retrying(fn: Callable[[], T], *, using: str = DEFAULT_DB_ALIAS) -> T:
    """Call ``fn``; when the database connection is lost, reconnect and call it again.

    For ``DB_RETRY_SECONDS`` (backoff from 50 ms to 1 s): a connection reset by the server
    or a database away for a few seconds delays a run's write instead of failing the run.
    ``fn`` must be safe to call again after a failure: a transaction that did not commit, a
    conditional update, or a write that checks whether its first attempt got through
    (:func:`~agent_channels.channel.log.append`). Inside a transaction nothing is retried:
    the transaction is lost with its connection, so whoever opened it retries it whole.
    """
    connection = connections[using]
    if connection.in_atomic_block:
        return fn()
    deadline = time.monotonic() + float(get_config()["DB_RETRY_SECONDS"])
    delay = 0.05
    while True:
        try:
            return fn()
        except TRANSIENT_ERRORS as exc:
            if connection.in_atomic_block or time.monotonic() + delay > deadline:
                raise
            logger.warning(
                "agent_channels: database unavailable (%s); retrying in %.2f s",
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                delay,
            )
        reset(using)
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def reset(using: str = DEFAULT_DB_ALIAS) -> None:
    """Drop this thread's connection, broken or not: the next query opens a fresh one."""
    with suppress(Error):
        connections[using].close()
