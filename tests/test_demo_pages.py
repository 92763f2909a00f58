"""The example project's pages: who may open a channel, no writes on GET, untrusted text."""

from urllib.parse import quote

import pytest

from agent_channels import publish
from agent_channels.models import Channel, Run

pytestmark = pytest.mark.django_db

HOSTILE = "</script><script>alert(1)</script>"


def page(client, channel):
    return client.get(f"/c/{quote(channel, safe='')}/")


def test_anonymous_users_are_sent_to_log_in(client):
    response = page(client, "x")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_channel_page_is_built_from_the_tags(admin_client):
    publish("tagged", "message.delta", {"message_id": "m", "text": "rendered on the server"})
    body = page(admin_client, "tagged").content.decode()
    assert "/static/agent_channels/client.js" in body and "<agent-channel" in body
    assert 'channel="tagged"' in body and "rendered on the server" in body


def test_a_hostile_channel_name_stays_text(admin_client):
    publish(HOSTILE, "tick")
    response = page(admin_client, HOSTILE)
    assert response.status_code == 200
    assert HOSTILE.encode() not in response.content


def test_opening_a_new_channel_creates_nothing(client, django_user_model):
    user = django_user_model.objects.create_user("dana", password="pw")
    client.force_login(user)
    # "New channel" hands out an unguessable name in the user's own namespace.
    location = client.get("/new/")["Location"]
    assert location.startswith(f"/c/user:{user.pk}/demo-")
    assert len(location) > len(f"/c/user:{user.pk}/demo-") + 20
    response = client.get(location)
    assert response.status_code == 200 and b"created when its first run starts" in response.content
    assert client.get("/new/")["Location"] != location
    assert not Channel.objects.exists()


def test_the_form_starts_a_run_and_makes_the_user_the_owner(client, django_user_model):
    user = django_user_model.objects.create_user("dana", password="pw")
    client.force_login(user)
    name = f"user:{user.pk}/danas-run"
    response = client.post(f"/c/{name}/", {"agent": "demo", "input": '{"tokens": 0}'})
    assert response.status_code == 302 and response["Location"] == f"/c/{name}/"
    run = Run.objects.get(channel__name=name)
    assert run.agent == "demo" and run.input == {"tokens": 0} and run.created_by == user
    assert Channel.objects.get(name=name).owner == user


def test_the_form_reports_an_unknown_agent(admin_client):
    response = admin_client.post("/c/x/", {"agent": "nope", "input": ""}, follow=True)
    assert b"There is no agent named" in response.content
    assert not Run.objects.exists()


def test_other_users_channels_and_names_outside_ones_namespace_are_refused_alike(
    client, django_user_model
):
    owner = django_user_model.objects.create_user("owner")
    publish("owned", "tick", owner=owner)
    publish(f"user:{owner.pk}/theirs", "tick", owner=owner)
    eve = django_user_model.objects.create_user("eve")
    client.force_login(eve)
    answers = set()
    for name in ("owned", "free-name", f"user:{owner.pk}/theirs", f"user:{owner.pk}/unused"):
        shown, posted = page(client, name), client.post(f"/c/{name}/", {"agent": "demo"})
        answers.add((shown.status_code, shown.content, posted.status_code, posted.content))
    # One answer whether the name exists or not: the pages tell nobody which names exist.
    assert answers == {(404, b"No such channel.", 404, b"No such channel.")}
    assert not Run.objects.exists()
    assert set(Channel.objects.values_list("name", flat=True)) == {
        "owned", f"user:{owner.pk}/theirs"}


def test_the_index_lists_only_the_users_channels_with_their_latest_run(client,
                                                                    django_user_model):
    owner = django_user_model.objects.create_user("owner")
    publish("theirs", "tick", owner=owner)
    user = django_user_model.objects.create_user("me")
    publish("mine", "tick", owner=user)
    channel = Channel.objects.get(name="mine")
    Run.objects.create(channel=channel, agent="demo", status="completed")
    client.force_login(user)
    body = client.get("/").content.decode()
    assert "mine" in body and "theirs" not in body
    assert "demo · completed" in body


@pytest.mark.integration
def test_bare_daphne_serves_the_client_script_of_the_example_project(tmp_path):
    """README's deployment: `daphne example_project.asgi:application`, no runserver."""
    import subprocess
    import sys
    import urllib.request

    from .procs import ROOT, child_env, free_port, wait_for_port

    port = free_port()
    env = child_env(DJANGO_SETTINGS_MODULE="example_project.settings",
                    DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", DJANGO_DEBUG="1")
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                             "example_project.asgi:application"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        base = f"http://127.0.0.1:{port}/static/agent_channels/"
        with urllib.request.urlopen(base + "client.js", timeout=10) as response:
            assert response.status == 200
            assert "javascript" in response.headers["Content-Type"]
            assert b"customElements.define" in response.read()
        with urllib.request.urlopen(base + "client.css", timeout=10) as response:
            assert response.status == 200 and b".agch" in response.read()
    finally:
        proc.terminate()
        proc.wait(10)


def test_staff_see_admin_links_on_the_index(admin_client):
    publish("linked", "tick")
    channel = Channel.objects.get(name="linked")
    body = admin_client.get("/").content.decode()
    assert f'href="/admin/agent_channels/channel/{channel.pk}/change/"' in body
    assert 'href="/admin/"' in body
