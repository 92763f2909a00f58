"""The test project's routes plus django-eventstream's SSE view at ``es/<channel>/``
(bench_eventstream.py's reconnect comparison)."""

import django_eventstream
from django.urls import include, path

from tests.urls import urlpatterns as base

urlpatterns = [*base, path("es/<channel>/", include(django_eventstream.urls))]
