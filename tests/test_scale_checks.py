"""Checks E110, E111 and W110: how many runs a process carries, and how fast a dead one is noticed."""

import pytest
from django.core.checks import Error, Warning
from django.test import override_settings

from agent_channels.runtime.checks import check_runtime_settings

INPROCESS = "agent_channels.runtime.backends.inprocess.InProcessBackend"
POSTGRES = {"ENGINE": "django.db.backends.postgresql", "NAME": "x", "OPTIONS": {}}


def runtime(**values):
    from django.conf import settings

    return override_settings(AGENT_CHANNELS={**settings.AGENT_CHANNELS, **values})


@pytest.mark.parametrize("value", [0, -3, "100", 2.5, True, None])
def test_e110_inprocess_workers_must_be_a_positive_integer(value):
    with runtime(INPROCESS_WORKERS=value):
        assert check_runtime_settings() == [
            Error(
                f"AGENT_CHANNELS['INPROCESS_WORKERS'] = {value!r} is not a positive integer.",
                hint="Give the number of runs one process executes at once, e.g. 100.",
                id="agent_channels.E110",
            )
        ]


@pytest.mark.parametrize(("beat", "stale"), [(1.5, 4.0), (0, 6.0), (-1, 6.0), ("2", 8), (2, None)])
def test_e111_a_run_is_stale_only_after_three_missed_heartbeats(beat, stale):
    with runtime(HEARTBEAT_SECONDS=beat, STALE_AFTER_SECONDS=stale):
        assert check_runtime_settings() == [
            Error(
                f"AGENT_CHANNELS['STALE_AFTER_SECONDS'] = {stale!r} is not at least three "
                f"heartbeats (HEARTBEAT_SECONDS = {beat!r}): a live worker's runs would be "
                "taken for dead and started twice.",
                hint="Use positive numbers with STALE_AFTER_SECONDS >= 3 * HEARTBEAT_SECONDS, "
                "e.g. 1.5 and 6.0.",
                id="agent_channels.E111",
            )
        ]


def test_the_defaults_pass_e110_and_e111():
    from agent_channels.conf import DEFAULTS

    keys = ("INPROCESS_WORKERS", "HEARTBEAT_SECONDS", "STALE_AFTER_SECONDS")
    with runtime(**{key: DEFAULTS[key] for key in keys}):
        ids = [m.id for m in check_runtime_settings()]
    assert "agent_channels.E110" not in ids and "agent_channels.E111" not in ids


W110 = Warning(
    "INPROCESS_WORKERS = 100 threads on PostgreSQL without a connection pool: each busy run "
    "thread keeps a connection of its own.",
    hint='Add DATABASES["default"]["OPTIONS"]["pool"] = {"max_size": 10} '
    '(pip install "psycopg[pool]", CONN_MAX_AGE = 0), or lower INPROCESS_WORKERS.',
    id="agent_channels.W110",
)


def databases(database):
    # The check reads settings only; it never connects.
    from django.db import connections

    original = connections.settings
    connections.settings = {"default": database}
    return original


@pytest.mark.parametrize(
    ("database", "workers", "backend", "expected"),
    [
        (POSTGRES, 100, INPROCESS, [W110]),
        (POSTGRES, 20, INPROCESS, []),
        ({**POSTGRES, "OPTIONS": {"pool": {"max_size": 10}}}, 100, INPROCESS, []),
        ({**POSTGRES, "OPTIONS": {"pool": True}}, 100, INPROCESS, []),
        (POSTGRES, 100, "agent_channels.runtime.backends.celery.CeleryBackend", []),
        ({"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}, 100, INPROCESS, []),
    ],
)
def test_w110_many_threads_on_postgresql_want_a_pool(database, workers, backend, expected):
    from django.db import connections

    original = databases(database)
    try:
        with runtime(INPROCESS_WORKERS=workers, RUN_BACKEND=backend):
            assert check_runtime_settings() == expected
    finally:
        connections.settings = original
