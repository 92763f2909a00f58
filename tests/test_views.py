"""The HTTP events endpoint: pages of the log, with the same errors as the WebSocket."""

import io
import json
from urllib.parse import quote

import pytest
from django.core.management import call_command
from django.test import override_settings

from agent_channels import publish
from agent_channels.models import Channel

from .helpers import create_operator

pytestmark = pytest.mark.django_db(transaction=True)


def url(channel, query=""):
    return f"/agent-channels/{quote(channel, safe='')}/events/" + (f"?{query}" if query else "")


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("owner", password="pw")


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


def get(client, channel, query="", status=200):
    response = client.get(url(channel, query))
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    return response.json()


def fill(channel, owner, count):
    for i in range(count):
        publish(channel, "tick", {"i": i}, owner=owner)


def seqs(body):
    return [e["seq"] for e in body["events"]]


def test_pages_through_the_whole_log(owner_client, owner):
    fill("wf", owner, 7)
    first = get(owner_client, "wf", "limit=3")
    assert seqs(first) == [1, 2, 3]
    assert (first["channel"], first["last_seq"], first["head_seq"], first["has_more"]) == (
        "wf", 3, 7, True
    )
    second = get(owner_client, "wf", f"since={first['last_seq']}&limit=3")
    assert seqs(second) == [4, 5, 6] and second["has_more"]
    third = get(owner_client, "wf", f"since={second['last_seq']}&limit=3")
    assert seqs(third) == [7]
    assert (third["last_seq"], third["head_seq"], third["has_more"]) == (7, 7, False)
    caught_up = get(owner_client, "wf", "since=7")
    assert caught_up["events"] == [] and caught_up["last_seq"] == 7 and not caught_up["has_more"]


def test_events_have_the_protocol_frame_shape(owner_client, owner):
    event = publish("shape", "message.delta", {"text": "hi"}, owner=owner)
    body = get(owner_client, "shape")
    assert body["events"] == [
        {"type": "event", "seq": 1, "event": "message.delta", "run": None,
         "data": {"text": "hi"}, "ts": event.created_at.isoformat()}
    ]


def test_default_and_maximum_page_size(owner_client, owner):
    fill("big", owner, 12)
    with override_settings(AGENT_CHANNELS={"PAGE_SIZE": 5, "MAX_PAGE_SIZE": 10}):
        assert seqs(get(owner_client, "big")) == [1, 2, 3, 4, 5]
        assert len(get(owner_client, "big", "limit=10")["events"]) == 10
        error = get(owner_client, "big", "limit=11", status=400)
        assert error == {"type": "error", "code": "invalid_parameter",
                         "message": "'limit' must be 1 to 10."}


def test_empty_since_and_limit_mean_the_defaults(owner_client, owner):
    fill("empty-params", owner, 2)
    assert seqs(get(owner_client, "empty-params", "since=&limit=")) == [1, 2]


@pytest.mark.parametrize(
    "name",
    ["a/b/c", "org:42/run:7", "with spaces", "ünïcödé/日本語", "emoji 🙂", "events/events",
     "a/events/b", "100%", "q?x=1&y=2#frag", "x" * 200, " leading and trailing "],
)
def test_channel_names_round_trip_through_the_url(owner_client, owner, name):
    fill(name, owner, 2)
    body = get(owner_client, name)
    assert body["channel"] == name
    assert seqs(body) == [1, 2]


def test_model_output_comes_back_as_json_never_html(owner_client, owner):
    hostile = {"text": "<script>alert(1)</script> & \"quotes\" </b>", "nested": {"html": "<img src=x>"},
               "unicode": "ünï 🙂", "numbers": [1, 2.5, None, True]}
    publish("xss", "message.completed", hostile, owner=owner)
    response = owner_client.get(url("xss"))
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content)["events"][0]["data"] == hostile


@pytest.mark.parametrize(
    ("query", "message"),
    [("since=-1", "'since' must be a non-negative integer."),
     ("since=abc", "'since' must be a non-negative integer."),
     ("since=1.5", "'since' must be a non-negative integer."),
     ("since=%C2%B2", "'since' must be a non-negative integer."),
     ("since=" + "9" * 19, "'since' must be a non-negative integer."),
     ("limit=x", "'limit' must be a non-negative integer."),
     ("limit=-5", "'limit' must be a non-negative integer."),
     ("limit=0", "'limit' must be 1 to 1000."),
     ("limit=1001", "'limit' must be 1 to 1000.")],
)
def test_bad_parameters_are_400s(owner_client, owner, query, message):
    fill("params", owner, 1)
    assert get(owner_client, "params", query, status=400) == {
        "type": "error", "code": "invalid_parameter", "message": message
    }


@pytest.mark.parametrize(
    ("name", "message"),
    [("x" * 201, "A channel name must be 1 to 200 characters long, not 201."),
     ("bell\x07", "A channel name must not contain control characters."),
     ("del\x7f", "A channel name must not contain control characters."),
     ("tab\there", "A channel name must not contain control characters.")],
)
def test_bad_channel_names_are_400s(owner_client, name, message):
    assert get(owner_client, name, status=400) == {
        "type": "error", "code": "invalid_channel", "message": message
    }


def test_anonymous_users_get_401(client, owner):
    fill("private", owner, 1)
    assert get(client, "private", status=401) == {
        "type": "error", "code": "unauthenticated", "message": "Log in to read this channel."
    }


def test_other_users_get_403(client, owner, django_user_model):
    fill("private", owner, 1)
    client.force_login(django_user_model.objects.create_user("mallory"))
    assert get(client, "private", status=403) == {
        "type": "error", "code": "forbidden", "message": "You may not read this channel."
    }


def test_inactive_owner_is_treated_as_logged_out(client, owner):
    fill("private", owner, 1)
    owner.is_active = False
    owner.save()
    client.force_login(owner)
    # The auth backend does not load inactive users: the request is anonymous.
    assert get(client, "private", status=401)["code"] == "unauthenticated"


def test_staff_may_read_any_channel(client, owner, django_user_model):
    fill("private", owner, 2)
    client.force_login(create_operator(django_user_model, "staff"))
    assert seqs(get(client, "private")) == [1, 2]


def test_staff_without_the_permission_may_not_read_other_channels(client, owner,
                                                                 django_user_model):
    fill("private", owner, 1)
    client.force_login(django_user_model.objects.create_user("clerk", is_staff=True))
    assert get(client, "private", status=403)["code"] == "forbidden"


def test_unowned_channels_are_for_operators_only(client, django_user_model):
    publish("system", "boot")
    client.force_login(django_user_model.objects.create_user("user"))
    assert get(client, "system", status=403)["code"] == "forbidden"


def test_missing_channel_reads_as_empty_for_staff(client, django_user_model):
    client.force_login(create_operator(django_user_model, "staff"))
    body = get(client, "not-yet")
    assert body == {"channel": "not-yet", "events": [], "last_seq": 0, "head_seq": 0,
                    "has_more": False}
    assert get(client, "not-yet", "since=1", status=400)["code"] == "since_ahead"


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_only_get_is_allowed(owner_client, owner, method):
    fill("ro", owner, 1)
    response = getattr(owner_client, method)(url("ro"))
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert response.json() == {"type": "error", "code": "method_not_allowed", "message": "Use GET."}
    assert Channel.objects.get(name="ro").last_seq == 1


def test_head_is_allowed(owner_client, owner):
    fill("head", owner, 1)
    assert owner_client.head(url("head")).status_code == 200


def test_since_ahead_is_a_400(owner_client, owner):
    fill("ahead", owner, 3)
    assert get(owner_client, "ahead", "since=4", status=400) == {
        "type": "error", "code": "since_ahead",
        "message": "since=4 is past the newest event (3).", "last_seq": 3,
    }


def test_pruned_history_is_a_410(owner_client, owner):
    fill("old", owner, 10)
    call_command("agent_channels_prune", keep_last=4, stdout=io.StringIO())
    assert Channel.objects.get(name="old").pruned_seq == 6
    assert get(owner_client, "old", "since=5", status=410) == {
        "type": "error", "code": "history_pruned", "message": "Events up to seq 6 were pruned.",
        "first_seq": 7,
    }
    assert get(owner_client, "old", "since=0", status=410)["code"] == "history_pruned"
    # From the pruned position on, and without since, the rest of the log is served.
    assert seqs(get(owner_client, "old", "since=6")) == [7, 8, 9, 10]
    assert seqs(get(owner_client, "old", "since=8")) == [9, 10]
    body = get(owner_client, "old")
    assert seqs(body) == [7, 8, 9, 10] and body["head_seq"] == 10


def test_query_count_does_not_grow_with_the_page(owner_client, owner, django_assert_max_num_queries):
    fill("queries", owner, 50)
    with django_assert_max_num_queries(6):
        assert len(get(owner_client, "queries", "limit=50")["events"]) == 50


def test_a_name_with_a_newline_gets_a_json_400_not_a_404(owner_client):
    body = get(owner_client, "line\nbreak", status=400)
    assert body["code"] == "invalid_channel"
