"""{% agent_channel %}: the server-rendered state, its escaping, its access rules and its cost."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.template import Context, Template, TemplateSyntaxError
from django.test import RequestFactory, override_settings

from agent_channels import publish
from agent_channels.channel.log import EventDraft, append
from agent_channels.channel.state import compact, load_state

pytestmark = pytest.mark.django_db

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


def render(source: str, user=None, **context) -> str:
    request = RequestFactory().get("/")
    request.user = user or AnonymousUser()
    return Template("{% load agent_channels %}" + source).render(
        Context({"request": request, **context})
    )


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("staff", is_staff=True, is_superuser=True)


def conversation(channel: str) -> None:
    append(
        channel,
        [
            EventDraft("run.queued", {"agent": "helper"}),
            EventDraft("run.started", {"attempt": 1}),
            EventDraft("message.delta", {"message_id": "m1", "text": "Hello "}),
            EventDraft("message.delta", {"message_id": "m1", "text": "world"}),
            EventDraft(
                "tool.started", {"name": "calculator", "call_id": "c1", "arguments": '{"x": 1}'}
            ),
            EventDraft(
                "tool.completed",
                {"name": "calculator", "call_id": "c1", "arguments": "", "result": 391, "ok": True},
            ),
            EventDraft("input.requested", {"prompt": "Deploy?", "choices": ["yes", "no"]}),
            EventDraft("run.waiting", {"prompt": "Deploy?"}),
        ],
    )


def test_the_state_compacts_deltas_tools_requests_and_status():
    conversation("state")
    state = load_state("state")
    assert state.last_seq == 8 and state.run_status == "waiting" and state.run_agent == "helper"
    kinds = [item.kind for item in state.items]
    assert kinds == ["status", "message", "tool", "input"]
    message, tool, request = state.items[1], state.items[2], state.items[3]
    assert message.text == "Hello world" and message.status == "streaming"
    assert (tool.name, tool.arguments, tool.result, tool.status) == (
        "calculator",
        '{"x": 1}',
        "391",
        "done",
    )
    assert request.pending and request.choices == ["yes", "no"]
    publish("state", "client.input", {"data": {"text": "yes"}, "id": None, "user": None})
    publish("state", "input.received", {"value": {"text": "yes"}, "seq": 9})
    publish("state", "message.completed", {"message_id": "m1", "text": "Hello world!"})
    state = load_state("state")
    assert not state.items[3].pending
    assert state.items[4].role == "user" and state.items[4].text == "yes"
    assert state.items[1].text == "Hello world!" and state.items[1].repaired


def test_the_events_option_filters_items_but_not_the_run_status():
    conversation("filtered")
    state = load_state("filtered", categories=["messages"])
    assert [item.kind for item in state.items] == ["message"]
    assert state.run_status == "waiting" and state.last_seq == 8


def test_limit_keeps_the_newest_items():
    rows = [(i + 1, "message.completed", {"message_id": str(i), "text": str(i)}) for i in range(10)]
    state = compact("c", rows, limit=3)
    assert [item.text for item in state.items] == ["7", "8", "9"] and state.truncated == 7


def test_the_tag_renders_text_escaped_and_inert(staff):
    publish("xss", "message.delta", {"message_id": "m", "text": HOSTILE})
    publish("xss", "tool.started", {"name": HOSTILE, "call_id": HOSTILE, "arguments": HOSTILE})
    publish("xss", "input.requested", {"prompt": HOSTILE, "choices": [HOSTILE]})
    html = render('{% agent_channel "xss" %}', staff)
    assert "<img" not in html and "<script" not in html
    assert html.count("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;") >= 4


def test_the_channel_name_is_escaped_in_attributes(staff):
    html = render("{% agent_channel name %}", staff, name='a"><script>x</script>')
    assert "<script>x" not in html
    assert 'channel="a&quot;&gt;&lt;script&gt;x&lt;/script&gt;"' in html


def test_the_page_resumes_after_the_rendered_seq(staff):
    conversation("seq")
    html = render('{% agent_channel "seq" %}', staff)
    assert 'since="8"' in html and 'can-send="true"' in html
    assert 'data-message-id="m1"><div class="agch-bubble">Hello world</div>' in html


@override_settings(AGENT_CHANNELS={"ACCESS_POLICY": "tests.policies.ReadOnlyPolicy"})
def test_controls_are_only_shown_to_users_who_may_send(django_user_model):
    conversation("ro")
    reader = django_user_model.objects.create_user("reader")
    html = render('{% agent_channel "ro" %}', reader)
    assert "Hello world" in html and 'can-send="false"' in html
    assert "agch-controls" not in html and "data-agch-answer" not in html


def test_controls_can_be_switched_off_and_are_shown_to_senders(staff):
    conversation("ctl")
    assert 'data-agch-action="interrupt"' in render('{% agent_channel "ctl" %}', staff)
    assert "agch-controls" not in render('{% agent_channel "ctl" controls=False %}', staff)


def test_users_who_may_not_read_see_nothing_of_the_channel(django_user_model):
    conversation("secret")
    html = render('{% agent_channel "secret" %}', django_user_model.objects.create_user("eve"))
    assert "Hello" not in html and "agent-channel " not in html
    assert "may not follow" in html


def test_unknown_event_categories_are_a_template_error(staff):
    with pytest.raises(TemplateSyntaxError, match="unknown events"):
        render('{% agent_channel "x" events="messages,bogus" %}', staff)


def test_the_assets_tag_links_the_packaged_client():
    html = render("{% agent_channel_assets %}")
    assert 'src="/static/agent_channels/client.js"' in html
    assert 'href="/static/agent_channels/client.css"' in html


def test_rendering_a_long_channel_takes_a_bounded_number_of_queries(
    staff, django_assert_max_num_queries
):
    for start in range(0, 5000, 500):
        append(
            "long",
            [
                EventDraft("message.delta", {"message_id": str(i // 50), "text": "x"})
                for i in range(start, start + 500)
            ],
        )
    # The access policy (staff: no query), the channel row, the events streamed in chunks:
    # the same few queries for 5,000 events as for 5.
    with django_assert_max_num_queries(4):
        html = render('{% agent_channel "long" %}', staff)
    assert html.count("agch-message--assistant") == 100 and 'since="5000"' in html
