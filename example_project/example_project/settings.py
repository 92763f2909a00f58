"""Settings for the example project. Deployment comes from the environment (see README)."""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from example_project.env import (
    celery_sentinel_broker,
    channel_layers,
    database_from_url,
    debug_and_secret_key,
    env_list,
    redis_sentinels,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# DEBUG only with DJANGO_DEBUG=1 (dev.py serve sets it); without it, a real secret key.
DEBUG, SECRET_KEY = debug_and_secret_key(os.environ)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")

INSTALLED_APPS = [
    "daphne",
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
    "django.middleware.security.SecurityMiddleware",
    # Static files (the agent_channels client) under bare daphne, which serves none itself.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
ASGI_APPLICATION = "example_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# DATABASE_POOL_SIZE: PostgreSQL connections per process (Django's psycopg pool). A Celery
# worker with a thread pool (-P threads -c 100) carries 100 runs on about 10 connections,
# because a run's thread gives its connection back between writes; docs/deployment.rst.
DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL"),
        BASE_DIR / "db.sqlite3",
        pool_size=int(os.environ.get("DATABASE_POOL_SIZE", "10")),
    )
}
REDIS_URL = os.environ.get("REDIS_URL") or None
# Redis behind Sentinel (docs/deployment.rst, "Scale-out"): REDIS_SENTINELS="h1:26379,h2:26379"
# and REDIS_MASTER_NAME; the channel layer and the Celery broker then follow a failover.
REDIS_SENTINELS = redis_sentinels(os.environ.get("REDIS_SENTINELS"))
REDIS_MASTER_NAME = os.environ.get("REDIS_MASTER_NAME", "mymaster")
# channels-redis's PUB/SUB layer unless REDIS_CHANNEL_LAYER=core: with 200 runs streaming
# through two daphne it delivered deltas at p99 64-86 ms against 3.2 s (docs/deployment.rst).
REDIS_CHANNEL_LAYER = os.environ.get("REDIS_CHANNEL_LAYER", "pubsub")
if REDIS_CHANNEL_LAYER not in ("core", "pubsub"):
    raise ImproperlyConfigured(
        f"REDIS_CHANNEL_LAYER must be 'core' or 'pubsub', not {REDIS_CHANNEL_LAYER!r}."
    )
CHANNEL_LAYERS = channel_layers(
    REDIS_URL, REDIS_SENTINELS, REDIS_MASTER_NAME, pubsub=REDIS_CHANNEL_LAYER == "pubsub"
)

# Celery: the broker defaults to REDIS_URL; with neither set, runs execute in threads of
# the web process (agent_channels' in-process backend picks itself when this is None).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or REDIS_URL
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One prefetched message per process: a long run must not sit behind another in a queue.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The Redis broker redelivers an unacknowledged message after this many seconds, even
# if the run is still going. Duplicates are harmless (the run is claimed once), but the
# time should exceed RUN_TIME_LIMIT; see docs/runtime.rst.
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {"visibility_timeout": 2 * 3600}
if REDIS_SENTINELS and not os.environ.get("CELERY_BROKER_URL"):
    CELERY_BROKER_URL, _sentinel_options = celery_sentinel_broker(
        REDIS_SENTINELS, REDIS_MASTER_NAME, db=1
    )
    CELERY_BROKER_TRANSPORT_OPTIONS.update(_sentinel_options)

AGENT_CHANNELS = {
    "EXPECTED_EVENT_RATE": 200,
    "RUN_TIME_LIMIT": 3600,
}

STATIC_URL = "static/"
# `manage.py collectstatic` fills this for a deployment (DJANGO_DEBUG=0); with DEBUG on,
# WhiteNoise serves straight from the apps' static/ folders, so no collectstatic is needed.
STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
LOGIN_URL = "/admin/login/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"agent_channels": {"handlers": ["console"], "level": "INFO"}},
}
