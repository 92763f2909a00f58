"""Database connections of threads that mostly wait.

A run spends most of its life waiting on a model; with a thread per run, a connection
held per thread would exhaust PostgreSQL (100 connections by default) long before the
threads run out. With Django's connection pool (``OPTIONS: {"pool": {...}}``, Django
5.1+) a thread gives its connection back to the pool after each write instead, so a
worker process needs only as many connections as it has writes in flight.
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connections

__all__ = ["is_pooled", "release"]


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
