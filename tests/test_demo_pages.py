"""The example project's pages: who may open a channel, and untrusted text stays text."""

from pathlib import Path
from urllib.parse import quote

import pytest

from agent_channels import publish
from agent_channels.models import Channel

pytestmark = pytest.mark.django_db

HOSTILE = "</script><script>alert(1)</script>"


def page(client, channel):
    return client.get(f"/c/{quote(channel, safe='')}/")


def test_anonymous_users_are_sent_to_log_in(client):
    response = page(client, "x")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_channel_name_reaches_the_page_as_json_not_markup(admin_client):
    response = page(admin_client, HOSTILE)
    assert response.status_code == 200
    assert HOSTILE.encode() not in response.content
    assert b'id="channel-name"' in response.content
    assert b"demo/follow.js" in response.content


def test_opening_a_new_channel_makes_the_user_its_owner(client, django_user_model):
    user = django_user_model.objects.create_user("dana", password="pw")
    client.force_login(user)
    assert page(client, "danas-channel").status_code == 200
    assert Channel.objects.get(name="danas-channel").owner == user


def test_other_users_channels_are_refused(client, django_user_model):
    owner = django_user_model.objects.create_user("owner")
    publish("owned", "tick", owner=owner)
    client.force_login(django_user_model.objects.create_user("eve"))
    assert page(client, "owned").status_code == 403


def test_the_index_lists_only_the_users_channels(client, django_user_model):
    owner = django_user_model.objects.create_user("owner")
    publish("theirs", "tick", owner=owner)
    user = django_user_model.objects.create_user("me")
    publish("mine", "tick", owner=user)
    client.force_login(user)
    body = client.get("/").content
    assert b"mine" in body and b"theirs" not in body


def test_the_client_script_never_renders_event_data_as_html():
    script = (Path(__file__).resolve().parent.parent / "example_project" / "demo" / "static"
              / "demo" / "follow.js").read_text()
    assert "textContent" in script
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in script
