"""tests.settings plus django-eventstream with its database storage and Redis pub/sub,
for bench_eventstream.py (the peer at equal durability: every event is a database row)."""

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "django_eventstream"]  # noqa: F405
EVENTSTREAM_STORAGE_CLASS = "django_eventstream.storage.DjangoModelStorage"
# Its multi-process fan-out: every send_event() is also a Redis PUBLISH.
EVENTSTREAM_REDIS = {"host": "127.0.0.1", "port": 6379, "db": 8}
# Its SSE view next to ours, for the reconnect comparison (daphne serves tests.asgi).
ROOT_URLCONF = "es_urls"
