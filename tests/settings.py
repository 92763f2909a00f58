"""Settings for the test suite.

The backend pair comes from the environment, so the same suite runs on both:
``AGCH_DB=sqlite|postgres`` and ``AGCH_LAYER=memory|redis``. Server processes that
integration tests start get ``AGCH_DB_NAME`` so they open the test database.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from example_project.env import channel_layers, database_from_url, redis_sentinels

SECRET_KEY = "tests-insecure-key"
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "agent_channels",
    "demo",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
ASGI_APPLICATION = "tests.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

DB_KIND = os.environ.get("AGCH_DB", "sqlite")
LAYER_KIND = os.environ.get("AGCH_LAYER", "memory")
POSTGRES_URL = os.environ.get("AGCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AGCH_REDIS_URL", "redis://127.0.0.1:6379/5")

# One id per test run, inherited by the processes it starts: concurrent runs on one machine
# get their own database and channel-layer prefix instead of sharing "test_test".
RUN_ID = os.environ.setdefault("AGCH_RUN_ID", str(os.getpid()))
_sqlite_file = Path(tempfile.gettempdir()) / f"agch-tests-{RUN_ID}.sqlite3"
DATABASES = {
    "default": database_from_url(POSTGRES_URL if DB_KIND == "postgres" else None, _sqlite_file)
}
# AGCH_CONN_MAX_AGE: only for measuring what persistent connections cost (tests/test_load.py).
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("AGCH_CONN_MAX_AGE", "0"))
if DB_KIND == "postgres" and os.environ.get("AGCH_DB_POOL"):
    # Worker processes of the thread-pool tests: Django's psycopg pool of this many connections.
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": 1, "max_size": int(os.environ["AGCH_DB_POOL"]), "timeout": 30,
    }
    # The benchmarks run as example_project.env deploys a pool: without a health check (a
    # round trip) each time a connection leaves the pool. The suite keeps the check.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = os.environ.get("AGCH_DB_HEALTH_CHECKS") != "0"
if DB_KIND == "postgres":
    DATABASES["default"]["TEST"] = {"NAME": f"test_agch_{RUN_ID}"}
else:
    # A file, not :memory:, so that server and writer processes share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(_sqlite_file)}
if os.environ.get("AGCH_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["AGCH_DB_NAME"]

# The Sentinel test's processes: the layer asks these sentinels for the Redis primary.
REDIS_SENTINELS = redis_sentinels(os.environ.get("AGCH_REDIS_SENTINELS"))
#: "core" (channels-redis's RedisChannelLayer) or "pubsub" (AGCH_PASSES=pubsub in CI, and
#: the benchmarks, which compare the two).
LAYER_BACKEND = os.environ.get("AGCH_LAYER_BACKEND", "core") if LAYER_KIND == "redis" else ""
# The example project's helper: the suite tests the configuration users deploy.
CHANNEL_LAYERS = channel_layers(
    REDIS_URL if LAYER_KIND == "redis" else None,
    REDIS_SENTINELS if LAYER_KIND == "redis" else None,
    os.environ.get("AGCH_REDIS_MASTER", "mymaster"),
    pubsub=LAYER_BACKEND == "pubsub",
)
if LAYER_KIND == "redis":
    CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"agch-test-{RUN_ID}"
    if os.environ.get("AGCH_LAYER_CAPACITY"):
        CHANNEL_LAYERS["default"]["CONFIG"]["capacity"] = int(os.environ["AGCH_LAYER_CAPACITY"])
    if os.environ.get("AGCH_GROUP_EXPIRY"):
        CHANNEL_LAYERS["default"]["CONFIG"]["group_expiry"] = int(os.environ["AGCH_GROUP_EXPIRY"])

AGENT_CHANNELS = {
    "EXPECTED_EVENT_RATE": 100,
    "AGENTS": {
        "demo": "demo.agents.demo",
        "chat": "demo.agents.chat",
        "approval": "demo.agents.approval",
        "echo": "tests.agents.echo",
        "fail": "tests.agents.fail",
        "bad_output": "tests.agents.bad_output",
        "chatty": "tests.agents.chatty",
        "turns": "tests.agents.turns",
        "unstorable_tool": "tests.agents.unstorable_tool",
        "listener": "tests.agents.listener",
        "steps": "tests.agents.steps",
        "poller": "tests.agents.poller",
        "slow_tool": "tests.agents.slow_tool",
        "big_tool": "tests.agents.big_tool",
        "runaway": "tests.agents.runaway",
        "stubborn": "tests.agents.stubborn",
        "deaf": "tests.agents.deaf",
        "long_answer": "tests.agents.long_answer",
        "stamped": "tests.agents.stamped",
    },
    # Integration tests run Celery workers with AGCH_RUN_BACKEND=celery; unit tests run
    # in-process.
    "RUN_BACKEND": (
        "agent_channels.runtime.backends.celery.CeleryBackend"
        if os.environ.get("AGCH_RUN_BACKEND") == "celery"
        else "agent_channels.runtime.backends.inprocess.InProcessBackend"
    ),
    "CELERY_APP": "tests.celery_app.app",
    # The suite's own process has no connection pool (worker processes get one with
    # AGCH_DB_POOL): few threads, so check W110 has nothing to say.
    "INPROCESS_WORKERS": 16,
    # Short, so that the tests see a dead worker's run restarted within seconds.
    "HEARTBEAT_SECONDS": float(os.environ.get("AGCH_HEARTBEAT", "0.5")),
    "STALE_AFTER_SECONDS": float(os.environ.get("AGCH_STALE_AFTER", "3")),
    "REAP_EVERY_SECONDS": float(os.environ.get("AGCH_REAP_EVERY", "1")),
    "OPENAI_MODEL": "test-model",
    # Tests act as one user at machine speed: the HTTP throttles and the active-run quota
    # would refuse them. tests/test_quotas.py turns each on where it is the subject.
    "HTTP_RUNS_RATE": 0,
    "HTTP_MESSAGES_RATE": 0,
    "MAX_ACTIVE_RUNS_PER_USER": None,
}
if os.environ.get("AGCH_COALESCE_MAX_WINDOW_MS"):  # the benchmarks compare with it off
    AGENT_CHANNELS["COALESCE_MAX_WINDOW_MS"] = float(os.environ["AGCH_COALESCE_MAX_WINDOW_MS"])
#: The Celery broker of the integration tests: its own Redis database.
CELERY_BROKER_URL_FOR_TESTS = os.environ.get("AGCH_BROKER_URL", "redis://127.0.0.1:6379/6")
if os.environ.get("AGCH_DS_CONFORMANCE"):
    # The Durable Streams conformance suite: anonymous clients, cross-origin preflights, and
    # long-polls short enough for a suite that holds several open at once.
    AGENT_CHANNELS["DURABLE_STREAMS_POLICY"] = "agent_channels.durable_streams.access.OpenStreamPolicy"
    AGENT_CHANNELS["DURABLE_STREAMS_CORS_ORIGINS"] = "*"
    AGENT_CHANNELS["DURABLE_STREAMS_LONG_POLL_SECONDS"] = 0.5
    AGENT_CHANNELS["DURABLE_STREAMS_MAX_APPEND_BYTES"] = 16 * 1024 * 1024
    if os.environ.get("AGCH_DS_LONG_POLL"):
        AGENT_CHANNELS["DURABLE_STREAMS_LONG_POLL_SECONDS"] = float(os.environ["AGCH_DS_LONG_POLL"])
if os.environ.get("AGCH_MAX_SOCKETS"):
    AGENT_CHANNELS["MAX_SOCKETS_PER_USER"] = int(os.environ["AGCH_MAX_SOCKETS"])
if os.environ.get("AGCH_SHARED_CACHE"):
    # Processes that share THROTTLE_CACHE (the cross-process socket count): a Redis cache
    # in the layer's database, under this run's prefix.
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "shared": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": f"agch-test-{RUN_ID}",
        },
    }
    AGENT_CHANNELS["THROTTLE_CACHE"] = "shared"
if os.environ.get("AGCH_SOCKET_SLOT_SECONDS"):
    AGENT_CHANNELS["SOCKET_SLOT_SECONDS"] = float(os.environ["AGCH_SOCKET_SLOT_SECONDS"])
if os.environ.get("AGCH_HTTP_RUNS_RATE"):
    AGENT_CHANNELS["HTTP_RUNS_RATE"] = float(os.environ["AGCH_HTTP_RUNS_RATE"])
    AGENT_CHANNELS["HTTP_RUNS_BURST"] = int(os.environ.get("AGCH_HTTP_RUNS_BURST", "1"))
if os.environ.get("AGCH_GROUP_REFRESH"):
    AGENT_CHANNELS["GROUP_REFRESH_SECONDS"] = float(os.environ["AGCH_GROUP_REFRESH"])
if os.environ.get("AGCH_SEND_BUFFER_BYTES"):
    AGENT_CHANNELS["SEND_BUFFER_BYTES"] = int(os.environ["AGCH_SEND_BUFFER_BYTES"])
# The model API of the integration tests' workers (tests/test_responses_celery.py).
if os.environ.get("AGCH_OPENAI_API"):
    AGENT_CHANNELS["OPENAI_API"] = os.environ["AGCH_OPENAI_API"]
    AGENT_CHANNELS["OPENAI_BACKGROUND"] = os.environ.get("AGCH_OPENAI_BACKGROUND") == "1"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"agent_channels": {"handlers": ["console"], "level": "INFO"}},
}
# The admin's browser tests price the fake model's tokens in the daphne they start.
if os.environ.get("AGCH_MODEL_PRICES"):
    AGENT_CHANNELS["MODEL_PRICES"] = json.loads(os.environ["AGCH_MODEL_PRICES"])
