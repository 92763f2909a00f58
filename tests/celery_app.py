"""The Celery app the integration tests run workers of: ``celery -A tests.celery_app worker``."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("agch_tests")
app.conf.update(
    broker_url=os.environ.get("AGCH_BROKER_URL", "redis://127.0.0.1:6379/6"),
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=os.environ.get("AGCH_CELERY_QUEUE", "agch-tests"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if os.environ.get("AGCH_REDIS_SENTINELS"):
    # The Sentinel test: the broker is whatever Redis the sentinels call the primary.
    from example_project.env import celery_sentinel_broker, redis_sentinels

    url, options = celery_sentinel_broker(
        redis_sentinels(os.environ["AGCH_REDIS_SENTINELS"]),
        os.environ.get("AGCH_REDIS_MASTER", "mymaster"),
        db=1,
    )
    app.conf.update(broker_url=url, broker_transport_options=options)
app.autodiscover_tasks(["agent_channels"])
