"""``path("ag-ui/", include("agent_channels.agui.urls"))``: ``POST ag-ui/<agent>/``."""

from django.urls import path

from agent_channels.agui import views

app_name = "agui"

urlpatterns = [path("<str:agent>/", views.run_agent, name="run")]
