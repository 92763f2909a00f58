"""The read-only admin over the log renders model output escaped."""

import pytest
from django.urls import reverse

from agent_channels import publish
from agent_channels.models import Channel, Event, Run

pytestmark = pytest.mark.django_db

XSS = "<script>alert('pwned')</script>"


@pytest.fixture
def admin_client_with_data(admin_client):
    event = publish("admin:chan/1", "message.delta", {"text": XSS})
    Run.objects.create(channel=event.channel, agent="demo", input={"q": XSS})
    return admin_client


@pytest.mark.parametrize("model", [Channel, Event, Run])
def test_changelists_render_and_escape_model_output(admin_client_with_data, model):
    url = reverse(f"admin:agent_channels_{model._meta.model_name}_changelist")
    response = admin_client_with_data.get(url)
    assert response.status_code == 200
    assert XSS.encode() not in response.content


def test_the_channel_page_shows_recent_events_escaped(admin_client_with_data):
    channel = Channel.objects.get()
    response = admin_client_with_data.get(
        reverse("admin:agent_channels_channel_change", args=[channel.pk])
    )
    assert response.status_code == 200
    assert XSS.encode() not in response.content
    assert b"&lt;script&gt;" in response.content
    assert b"message.delta" in response.content


@pytest.mark.parametrize("model", [Channel, Event, Run])
def test_records_cannot_be_added_or_edited_by_hand(admin_client_with_data, model):
    add = admin_client_with_data.get(reverse(f"admin:agent_channels_{model._meta.model_name}_add"))
    assert add.status_code == 403
    obj = model.objects.first()
    change = admin_client_with_data.post(
        reverse(f"admin:agent_channels_{model._meta.model_name}_change", args=[obj.pk]), {}
    )
    assert change.status_code == 403
