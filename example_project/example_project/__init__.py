"""Loading the Celery app with Django, so that runs started here reach its broker."""

from example_project.celery import app as celery_app

__all__ = ["celery_app"]
