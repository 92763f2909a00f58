"""System checks: each ID fires on the setting it guards, with the exact message and hint."""

import pytest
from django.core import checks
from django.core.checks import Error, Warning
from django.db.utils import ConnectionHandler
from django.test import override_settings

from agent_channels import access
from agent_channels import checks as agch_checks
from agent_channels.checks import (
    check_access_policy,
    check_access_recheck,
    check_channel_layer,
    check_database,
    check_frame_limits,
    check_persistent_connections,
    check_settings,
)
from agent_channels.conf import DEFAULTS

IN_MEMORY = "channels.layers.InMemoryChannelLayer"
REDIS = "channels_redis.core.RedisChannelLayer"
PUBSUB = "channels_redis.pubsub.RedisPubSubChannelLayer"
GOOD_REDIS = {"default": {"BACKEND": REDIS, "CONFIG": {"hosts": ["redis://x"], "capacity": 1000}}}

W001 = Warning(
    "The in-memory channel layer cannot reach other processes: events published by a "
    "worker or another server process will not arrive live.",
    hint="Use channels_redis.core.RedisChannelLayer (or RedisPubSubChannelLayer) in production.",
    id="agent_channels.W001",
)


def ids(messages):
    return [m.id for m in messages]


# -- E001: the layer alias ------------------------------------------------------------------


@override_settings(CHANNEL_LAYERS={})
def test_e001_no_channel_layers():
    assert check_channel_layer() == [
        Error(
            "CHANNEL_LAYERS has no 'default' layer: events are stored but never delivered live.",
            hint="Add CHANNEL_LAYERS = {'default': {'BACKEND': "
            "'channels_redis.core.RedisChannelLayer', 'CONFIG': {'hosts': [{'address': "
            "REDIS_URL, 'socket_timeout': 30}]}}}.",
            id="agent_channels.E001",
        )
    ]


def test_e001_channel_layers_unset():
    with override_settings():
        from django.conf import settings

        del settings.CHANNEL_LAYERS
        assert ids(check_channel_layer()) == ["agent_channels.E001"]


@override_settings(CHANNEL_LAYERS=GOOD_REDIS, AGENT_CHANNELS={"CHANNEL_LAYER": "live"})
def test_e001_configured_alias_missing():
    assert check_channel_layer() == [
        Error(
            "CHANNEL_LAYERS has no 'live' layer: events are stored but never delivered live.",
            hint="Add CHANNEL_LAYERS = {'live': {'BACKEND': "
            "'channels_redis.core.RedisChannelLayer', 'CONFIG': {'hosts': [{'address': "
            "REDIS_URL, 'socket_timeout': 30}]}}}.",
            id="agent_channels.E001",
        )
    ]


@override_settings(
    CHANNEL_LAYERS={"live": GOOD_REDIS["default"]}, AGENT_CHANNELS={"CHANNEL_LAYER": "live"}
)
def test_e001_not_raised_for_a_configured_alias():
    assert check_channel_layer() == []


# -- E002: unknown keys ---------------------------------------------------------------------


@override_settings(AGENT_CHANNELS={"PAGESIZE": 5, "ACCESS_POLICY": DEFAULTS["ACCESS_POLICY"], "typo": 1})
def test_e002_unknown_keys():
    known = ", ".join(sorted(DEFAULTS))
    assert check_settings() == [
        Error(
            "AGENT_CHANNELS has unknown keys: PAGESIZE, typo.",
            hint=f"Remove them or fix their spelling; known keys are {known}.",
            id="agent_channels.E002",
        )
    ]


@pytest.mark.parametrize("value", [None, {}, {"PAGE_SIZE": 5}, dict(DEFAULTS)])
def test_e002_not_raised_for_known_keys(value):
    with override_settings(AGENT_CHANNELS=value):
        assert check_settings() == []


# -- E006: how often access is re-checked ---------------------------------------------------


@pytest.mark.parametrize("value", [-1, "30", None, True])
def test_e006_recheck_interval_must_be_a_non_negative_number(value):
    with override_settings(AGENT_CHANNELS={"ACCESS_RECHECK_SECONDS": value}):
        assert check_access_recheck() == [
            Error(
                f"AGENT_CHANNELS['ACCESS_RECHECK_SECONDS'] = {value!r} is not a number of "
                "seconds.",
                hint="Give a number >= 0, e.g. 30; 0 re-checks access on control frames only.",
                id="agent_channels.E006",
            )
        ]


@pytest.mark.parametrize("value", [0, 0.5, 30])
def test_e006_not_raised_for_numbers(value):
    with override_settings(AGENT_CHANNELS={"ACCESS_RECHECK_SECONDS": value}):
        assert check_access_recheck() == []


# -- E003: the access policy ----------------------------------------------------------------


class NotAPolicy:
    pass


class CustomPolicy(access.AccessPolicy):
    pass


@override_settings(AGENT_CHANNELS={"ACCESS_POLICY": "myproject.nowhere.Policy"})
def test_e003_unimportable_policy():
    messages = check_access_policy()
    assert len(messages) == 1
    # The ImportError's own text is part of the message; compare the rest exactly.
    assert messages[0].msg.startswith(
        "AGENT_CHANNELS['ACCESS_POLICY'] = 'myproject.nowhere.Policy' cannot be imported: "
    )
    assert messages[0] == Error(
        messages[0].msg,
        hint="Give the dotted path of an agent_channels.access.AccessPolicy subclass.",
        id="agent_channels.E003",
    )


@pytest.mark.parametrize(
    "path", ["agent_channels.access.NoSuchPolicy", "OwnerAccessPolicy", "", "agent_channels..x"]
)
def test_e003_unimportable_policy_variants(path):
    with override_settings(AGENT_CHANNELS={"ACCESS_POLICY": path}):
        assert ids(check_access_policy()) == ["agent_channels.E003"]


@pytest.mark.parametrize(
    "path", ["tests.test_checks.NotAPolicy", "agent_channels.access.get_access_policy", "json.dumps"]
)
def test_e003_not_a_subclass(path):
    with override_settings(AGENT_CHANNELS={"ACCESS_POLICY": path}):
        assert check_access_policy() == [
            Error(
                f"AGENT_CHANNELS['ACCESS_POLICY'] = {path!r} is not an AccessPolicy subclass.",
                hint="Subclass agent_channels.access.AccessPolicy and override can_read/can_send.",
                id="agent_channels.E003",
            )
        ]


def test_e003_a_class_instead_of_a_dotted_path():
    with override_settings(AGENT_CHANNELS={"ACCESS_POLICY": CustomPolicy}):
        assert check_access_policy() == [
            Error(
                f"AGENT_CHANNELS['ACCESS_POLICY'] = {CustomPolicy!r} is not a dotted path.",
                hint="Give the dotted path of an agent_channels.access.AccessPolicy subclass, "
                "as a string.",
                id="agent_channels.E003",
            )
        ]


@pytest.mark.parametrize(
    "path", ["agent_channels.access.OwnerAccessPolicy", "agent_channels.access.AccessPolicy",
             "tests.test_checks.CustomPolicy"],
)
def test_e003_not_raised_for_policy_subclasses(path):
    with override_settings(AGENT_CHANNELS={"ACCESS_POLICY": path}):
        assert check_access_policy() == []


# -- W001: the in-memory layer in production ------------------------------------------------


@override_settings(DEBUG=False, CHANNEL_LAYERS={"default": {"BACKEND": IN_MEMORY}})
def test_w001_in_memory_layer_without_debug():
    assert check_channel_layer() == [W001]


@override_settings(DEBUG=True, CHANNEL_LAYERS={"default": {"BACKEND": IN_MEMORY}})
def test_w001_not_raised_under_debug():
    assert check_channel_layer() == []


@pytest.mark.parametrize(
    "layers", [GOOD_REDIS, {"default": {"BACKEND": PUBSUB, "CONFIG": {"hosts": ["redis://x"]}}}]
)
def test_w001_not_raised_for_redis_layers(layers):
    with override_settings(DEBUG=False, CHANNEL_LAYERS=layers):
        assert check_channel_layer() == []


# -- W002: group_expiry shorter than the socket lifetime ------------------------------------


@override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": REDIS, "CONFIG": {"group_expiry": 3600, "capacity": 1000}}}
)
def test_w002_group_expiry_shorter_than_websocket_timeout():
    assert check_channel_layer() == [
        Warning(
            "The channel layer's group_expiry (3600 s) is shorter than WEBSOCKET_TIMEOUT "
            "(86400 s): long-lived sockets silently stop receiving live events when their "
            "group membership expires.",
            hint="Raise CHANNEL_LAYERS[...]['CONFIG']['group_expiry'] to at least the server's "
            "websocket timeout, or lower AGENT_CHANNELS['WEBSOCKET_TIMEOUT'] to match daphne's "
            "--websocket_timeout.",
            id="agent_channels.W002",
        )
    ]


@pytest.mark.parametrize(
    ("group_expiry", "timeout"), [(3600, 3600), (None, 86400), (100_000, 86400), (60, 30)]
)
def test_w002_not_raised_when_groups_outlive_sockets(group_expiry, timeout):
    config = {"capacity": 1000} if group_expiry is None else {"capacity": 1000, "group_expiry": group_expiry}
    with override_settings(
        CHANNEL_LAYERS={"default": {"BACKEND": REDIS, "CONFIG": config}},
        AGENT_CHANNELS={"WEBSOCKET_TIMEOUT": timeout},
    ):
        assert check_channel_layer() == []


@override_settings(
    DEBUG=True,
    CHANNEL_LAYERS={"default": {"BACKEND": IN_MEMORY, "CONFIG": {"group_expiry": 10}}},
    AGENT_CHANNELS={"WEBSOCKET_TIMEOUT": 60, "EXPECTED_EVENT_RATE": 1},
)
def test_w002_applies_to_the_in_memory_layer_too():
    assert ids(check_channel_layer()) == ["agent_channels.W002"]


# -- W003: capacity below the expected event rate -------------------------------------------


@override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": REDIS, "CONFIG": {"hosts": ["redis://x"]}}},
    AGENT_CHANNELS={"EXPECTED_EVENT_RATE": 500},
)
def test_w003_default_capacity_below_expected_rate():
    assert check_channel_layer() == [
        Warning(
            "The channel layer's capacity (100) holds less than one second of the expected "
            "event rate (500/s): live frames will be dropped and clients will fall back to "
            "reading the log.",
            hint="Raise CHANNEL_LAYERS[...]['CONFIG']['capacity'] to at least "
            "AGENT_CHANNELS['EXPECTED_EVENT_RATE'].",
            id="agent_channels.W003",
        )
    ]


@pytest.mark.parametrize(("capacity", "rate"), [(100, 100), (1000, 500), (None, 100), (None, 10)])
def test_w003_not_raised_when_capacity_covers_the_rate(capacity, rate):
    config = {} if capacity is None else {"capacity": capacity}
    with override_settings(
        CHANNEL_LAYERS={"default": {"BACKEND": REDIS, "CONFIG": config}},
        AGENT_CHANNELS={"EXPECTED_EVENT_RATE": rate},
    ):
        assert check_channel_layer() == []


@override_settings(
    DEBUG=False,
    CHANNEL_LAYERS={"default": {"BACKEND": IN_MEMORY, "CONFIG": {"group_expiry": 10, "capacity": 5}}},
    AGENT_CHANNELS={"WEBSOCKET_TIMEOUT": 60, "EXPECTED_EVENT_RATE": 50},
)
def test_layer_warnings_accumulate_in_order():
    assert ids(check_channel_layer()) == [
        "agent_channels.W001", "agent_channels.W002", "agent_channels.W003"
    ]


# -- W004: SQLite without IMMEDIATE transactions --------------------------------------------


def sqlite_connections(options):
    settings = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    if options is not None:
        settings["OPTIONS"] = options
    return ConnectionHandler({"default": settings, "lite": settings})


@pytest.mark.parametrize("options", [None, {}, {"transaction_mode": "DEFERRED"}, {"timeout": 20}])
def test_w004_sqlite_without_immediate_mode(monkeypatch, options):
    monkeypatch.setattr(agch_checks, "connections", sqlite_connections(options))
    assert check_database(databases=["lite"]) == [
        Warning(
            "SQLite database 'lite' does not use transaction_mode 'IMMEDIATE': concurrent "
            "publishers can fail with 'database is locked' instead of waiting their turn.",
            hint="Set DATABASES['lite']['OPTIONS']['transaction_mode'] = 'IMMEDIATE'.",
            id="agent_channels.W004",
        )
    ]


@pytest.mark.parametrize("mode", ["IMMEDIATE", "immediate"])
def test_w004_not_raised_in_immediate_mode(monkeypatch, mode):
    monkeypatch.setattr(agch_checks, "connections", sqlite_connections({"transaction_mode": mode}))
    assert check_database(databases=["default", "lite"]) == []


def test_w004_only_for_the_databases_django_asks_about(monkeypatch):
    monkeypatch.setattr(agch_checks, "connections", sqlite_connections({}))
    assert check_database() == []
    assert check_database(databases=[]) == []


def test_w004_not_raised_for_other_vendors(monkeypatch):
    handler = ConnectionHandler(
        {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}}
    )
    monkeypatch.setattr(agch_checks, "connections", handler)
    assert check_database(databases=["default"]) == []


def test_the_suites_own_database_passes():
    # tests/settings.py uses example_project.env, which sets IMMEDIATE for SQLite.
    assert check_database(databases=["default"]) == []


# -- registration ---------------------------------------------------------------------------


@override_settings(
    DEBUG=True, CHANNEL_LAYERS={},
    # INPROCESS_WORKERS: few threads, so the suite's unpooled PostgreSQL draws no W110.
    AGENT_CHANNELS={"ACCESS_POLICY": "tests.test_checks.NotAPolicy", "X": 1, "INPROCESS_WORKERS": 16},
)
def test_checks_are_registered_with_django():
    found = {m.id for m in checks.run_checks() if m.id and m.id.startswith("agent_channels.")}
    assert found == {"agent_channels.E001", "agent_channels.E002", "agent_channels.E003"}


def test_every_check_id_is_documented():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    code = "".join(
        (root / "agent_channels" / path).read_text(encoding="utf-8")
        for path in ("checks.py", "runtime/checks.py")
    )
    docs = (root / "docs" / "checks.rst").read_text(encoding="utf-8")
    check_ids = set(re.findall(r"agent_channels\.[EW]\d{3}", code))
    assert len(check_ids) == 23  # + E110, E111, W110 (scale), E301, E302 (ownership, quotas), W020, W021, E007 (limits)
    assert not [i for i in sorted(check_ids) if i not in docs]


# -- E004: a Redis socket timeout that kills idle consumers ---------------------------------

E004 = Error(
    "The channel layer's Redis socket_timeout (5 s) is not longer than channels-redis's "
    "blocking receive (5 s): idle consumers will fail with 'Timeout reading from' and drop "
    "their WebSockets.",
    hint="Give each host as a dict with a longer timeout, e.g. "
    "{'address': REDIS_URL, 'socket_timeout': 30}.",
    id="agent_channels.E004",
)


@pytest.mark.parametrize(
    "hosts",
    [["redis://x:6379/0"], [("x", 6379)], [{"address": "redis://x"}], None,
     [{"address": "redis://x", "socket_timeout": 5}], ["redis://x?socket_timeout=5"]],
)
def test_e004_redis_py_8_default_timeout_equals_the_blocking_receive(monkeypatch, hosts):
    monkeypatch.setattr(agch_checks, "_redis_default_socket_timeout", lambda: 5)
    config = {} if hosts is None else {"hosts": hosts}
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": REDIS, "CONFIG": config}}):
        assert agch_checks.check_redis_timeouts() == [E004]


@pytest.mark.parametrize(
    "hosts",
    [[{"address": "redis://x", "socket_timeout": 30}], [{"address": "redis://x",
                                                         "socket_timeout": None}],
     ["redis://x?socket_timeout=30"]],
)
def test_e004_not_raised_with_a_longer_or_no_timeout(monkeypatch, hosts):
    monkeypatch.setattr(agch_checks, "_redis_default_socket_timeout", lambda: 5)
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": REDIS,
                                                       "CONFIG": {"hosts": hosts}}}):
        assert agch_checks.check_redis_timeouts() == []


def test_e004_not_raised_before_redis_py_8_or_for_other_layers(monkeypatch):
    monkeypatch.setattr(agch_checks, "_redis_default_socket_timeout", lambda: None)
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": REDIS,
                                                       "CONFIG": {"hosts": ["redis://x"]}}}):
        assert agch_checks.check_redis_timeouts() == []
    monkeypatch.setattr(agch_checks, "_redis_default_socket_timeout", lambda: 5)
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": IN_MEMORY}}):
        assert agch_checks.check_redis_timeouts() == []


def test_e004_the_suite_and_example_layer_configs_pass():
    from example_project.env import channel_layers

    with override_settings(CHANNEL_LAYERS=channel_layers("redis://127.0.0.1:6379/0")):
        assert agch_checks.check_redis_timeouts() == []
    # Through Sentinel (docs/deployment.rst, "Scale-out"): the same timeout on the primary.
    sentinel = channel_layers(None, [("127.0.0.1", 26379)], "mymaster")
    assert sentinel["default"]["CONFIG"]["hosts"][0]["socket_timeout"] == 30
    with override_settings(CHANNEL_LAYERS=sentinel):
        assert agch_checks.check_redis_timeouts() == []


# -- W020: client frames the server drops before the app can refuse them --------------------


@pytest.mark.parametrize("ours", [1024 * 1024, 2 * 1024 * 1024])
def test_w020_client_frame_limit_not_below_the_servers(ours):
    with override_settings(AGENT_CHANNELS={"MAX_CLIENT_FRAME_BYTES": ours}):
        assert check_frame_limits() == [
            Warning(
                f"MAX_CLIENT_FRAME_BYTES ({ours}) is not below the server's largest WebSocket "
                "message (SERVER_MAX_MESSAGE_BYTES = 1048576): a frame between the two is "
                "dropped by the server, which closes the socket (1009) without the too_large "
                "error the client could act on.",
                hint="Lower AGENT_CHANNELS['MAX_CLIENT_FRAME_BYTES'], or raise the server's "
                "limit (daphne --websocket-max-message-size N, DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE "
                "under runserver) and set SERVER_MAX_MESSAGE_BYTES to match.",
                id="agent_channels.W020",
            )
        ]


@pytest.mark.parametrize(
    "config",
    [{}, {"MAX_CLIENT_FRAME_BYTES": 512 * 1024},
     {"MAX_CLIENT_FRAME_BYTES": 2 * 1024 * 1024, "SERVER_MAX_MESSAGE_BYTES": 16 * 1024 * 1024}],
)
def test_w020_not_raised_when_the_server_takes_every_frame_the_app_does(config):
    with override_settings(AGENT_CHANNELS=config):
        assert check_frame_limits() == []


# -- W021: persistent connections under ASGI without a pool ---------------------------------

POSTGRES = {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}


@pytest.mark.parametrize("age", [60, None])
def test_w021_persistent_connections_under_asgi(monkeypatch, age):
    monkeypatch.setattr(agch_checks.settings, "DATABASES", {"main": {**POSTGRES, "CONN_MAX_AGE": age}})
    assert check_persistent_connections() == [
        Warning(
            f"DATABASES['main'] keeps connections open (CONN_MAX_AGE = {age!r}) under ASGI: "
            "every thread that serves a request or a WebSocket keeps one of its own that "
            "nothing reuses, and a busy server exhausts max_connections.",
            hint='Set DATABASES[\'main\']["CONN_MAX_AGE"] = 0 and '
            'DATABASES[\'main\']["OPTIONS"]["pool"] = {"max_size": 10} '
            '(Django 5.1+, pip install "psycopg[pool]"); see the deployment docs.',
            id="agent_channels.W021",
        )
    ]


@pytest.mark.parametrize(
    "database",
    [
        {**POSTGRES, "CONN_MAX_AGE": 0},
        {**POSTGRES},  # Django's default is 0
        {**POSTGRES, "CONN_MAX_AGE": 0, "OPTIONS": {"pool": {"max_size": 10}}},
        {"ENGINE": "django.db.backends.sqlite3", "NAME": "x", "CONN_MAX_AGE": 60},
    ],
)
def test_w021_not_raised_for_short_lived_pooled_or_sqlite_connections(monkeypatch, database):
    monkeypatch.setattr(agch_checks.settings, "DATABASES", {"main": database})
    assert check_persistent_connections() == []


def test_w021_not_raised_without_an_asgi_application(monkeypatch):
    monkeypatch.setattr(agch_checks.settings, "DATABASES", {"main": {**POSTGRES, "CONN_MAX_AGE": 60}})
    with override_settings(ASGI_APPLICATION=None):
        assert check_persistent_connections() == []


def test_w021_the_example_projects_postgres_settings_pass(monkeypatch):
    from example_project.env import database_from_url

    for pool_size in (None, 10):
        database = database_from_url("postgres://u@127.0.0.1/x", "unused", pool_size=pool_size)
        monkeypatch.setattr(agch_checks.settings, "DATABASES", {"default": database})
        assert check_persistent_connections() == []


# -- E007: sizes and times of the wire and the runtime ---------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_EVENT_BYTES", "16MB", "is not a whole number >= 0."),
        ("MAX_SENT_FRAME_BYTES", 1.5, "is not a whole number >= 0."),
        ("SERVER_MAX_MESSAGE_BYTES", 0, "is not a whole number >= 1."),
        ("MAX_PENDING_CONTROL", True, "is not a whole number >= 1."),
        ("TOOL_TIME_LIMIT", -1, "is not a number >= 0 or None."),
        ("CELERY_TIME_LIMIT_MARGIN", None, "is not a number >= 0."),
        ("DB_RETRY_SECONDS", "10", "is not a number >= 0."),
        ("COALESCE_MAX_WINDOW_MS", -250, "is not a number >= 0."),
        ("GROUP_REFRESH_SECONDS", -0.5, "is not a number >= 0."),
    ],
)
def test_e007_limits_that_are_not_numbers_in_range(name, value, message):
    with override_settings(AGENT_CHANNELS={name: value}):
        errors = agch_checks.check_limit_numbers()
    assert [(e.id, e.msg) for e in errors] == [
        ("agent_channels.E007", f"AGENT_CHANNELS[{name!r}] = {value!r} {message}")
    ]
    assert repr(DEFAULTS[name]) in errors[0].hint


@pytest.mark.parametrize(
    "config",
    [{}, {"TOOL_TIME_LIMIT": None, "DB_RETRY_SECONDS": 0, "GROUP_REFRESH_SECONDS": 2.5},
     {"MAX_EVENT_BYTES": 0, "MAX_SENT_FRAME_BYTES": 0, "CELERY_TIME_LIMIT_MARGIN": 0}],
)
def test_e007_not_raised_for_numbers_in_range(config):
    with override_settings(AGENT_CHANNELS=config):
        assert agch_checks.check_limit_numbers() == []
