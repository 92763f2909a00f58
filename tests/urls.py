# The example project's routes: the app's HTTP API, the admin and the demo pages.
from example_project.urls import urlpatterns

__all__ = ["urlpatterns"]
