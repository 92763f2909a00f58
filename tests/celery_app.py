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
app.autodiscover_tasks(["agent_channels"])
