"""The consumer in-process: resume, live switch, gaps, denials, client frames."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async as sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth.models import AnonymousUser

from agent_channels import publish
from agent_channels.channel.log import EventDraft, append
from agent_channels.channel.names import control_group, event_group
from agent_channels.channel.retention import prune
from agent_channels.channel.wire import build_events_message
from agent_channels.models import Channel, Event

from .helpers import create_operator
from .wsclient import connect, recv, recv_events

pytestmark = pytest.mark.django_db(transaction=True)

apublish = sync_to_async(publish)


@pytest.fixture
def staff(django_user_model):
    return create_operator(django_user_model, "staff")


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice")


async def test_hello_then_replay_from_the_first_event_then_live(staff):
    for i in range(3):
        await apublish("wf:1/a b", "tick", {"i": i})
    ws = await connect("wf:1/a b", staff)
    hello = await recv(ws)
    assert hello == {"type": "hello", "channel": "wf:1/a b", "since": 0, "last_seq": 3,
                     "can_send": True}
    assert [f["seq"] for f in await recv_events(ws, 3)] == [1, 2, 3]
    await apublish("wf:1/a b", "tick", {"i": 3})
    live = await recv_events(ws, 1)
    assert live[0]["seq"] == 4 and live[0]["data"] == {"i": 3}
    await ws.disconnect()


async def test_since_resumes_after_the_given_seq(staff):
    for i in range(5):
        await apublish("resume", "tick", {"i": i})
    ws = await connect("resume", staff, since=3)
    assert (await recv(ws))["since"] == 3
    assert [f["seq"] for f in await recv_events(ws, 2)] == [4, 5]
    assert await ws.receive_nothing(0.2)
    await ws.disconnect()


async def test_events_published_during_replay_arrive_once_in_order(staff):
    await sync_to_async(append)("busy", [EventDraft("tick", {"i": i}) for i in range(300)])
    ws = await connect("busy", staff)
    await recv(ws)

    async def publish_more():
        for i in range(300, 350):
            await apublish("busy", "tick", {"i": i})

    publisher = asyncio.create_task(publish_more())
    frames = await recv_events(ws, 350, timeout=20)
    await publisher
    assert [f["seq"] for f in frames] == list(range(1, 351))
    assert [f["data"]["i"] for f in frames] == list(range(350))
    assert await ws.receive_nothing(0.2)
    await ws.disconnect()


async def test_a_gap_on_the_wire_is_filled_from_the_log(staff):
    await apublish("gappy", "tick", {"i": 0})
    ws = await connect("gappy", staff)
    await recv(ws)
    await recv_events(ws, 1)
    # Store events 2..4 without announcing them, as if the layer had dropped them...
    await sync_to_async(append)("gappy", [EventDraft("tick", {"i": i}) for i in (1, 2, 3)],
                                notify=False)
    event = await apublish("gappy", "tick", {"i": 4})
    assert event.seq == 5
    # ...then only event 5 arrives live: the consumer must send 2, 3, 4 first.
    assert [f["seq"] for f in await recv_events(ws, 4)] == [2, 3, 4, 5]
    await ws.disconnect()


async def test_duplicate_and_stale_live_messages_are_not_resent(staff):
    await apublish("dups", "tick")
    ws = await connect("dups", staff)
    await recv(ws)
    frames = await recv_events(ws, 1)
    layer = get_channel_layer()
    text = json.dumps(frames[0])
    await layer.group_send(event_group("dups"), build_events_message(1, [text]))
    assert await ws.receive_nothing(0.3)
    await ws.disconnect()


async def test_oversized_events_travel_as_notifications_and_are_read_from_the_log(staff, settings):
    settings.AGENT_CHANNELS = {"MAX_WIRE_FRAME_BYTES": 100}
    ws = await connect("big", staff)
    await recv(ws)
    await apublish("big", "blob", {"text": "x" * 10_000})
    frame = (await recv_events(ws, 1))[0]
    assert frame["seq"] == 1 and len(frame["data"]["text"]) == 10_000
    await ws.disconnect()


async def test_since_past_the_head_is_refused(staff):
    await apublish("short", "tick")
    ws = await connect("short", staff, since=5)
    frame = await recv(ws)
    assert frame["type"] == "error" and frame["code"] == "since_ahead" and frame["last_seq"] == 1
    assert (await ws.receive_output(5))["code"] == 4400


async def test_resuming_from_a_pruned_position_is_refused_explicitly(staff):
    for _ in range(10):
        await apublish("old", "tick")
    await sync_to_async(prune)(keep_last=3)
    ws = await connect("old", staff, since=2)
    frame = await recv(ws)
    assert frame["code"] == "history_pruned" and frame["first_seq"] == 8
    assert (await ws.receive_output(5))["code"] == 4410
    # Without since, the client starts at the first retained event and is told where.
    ws = await connect("old", staff)
    hello = await recv(ws)
    assert hello["since"] == 7
    assert [f["seq"] for f in await recv_events(ws, 3)] == [8, 9, 10]
    await ws.disconnect()


@pytest.mark.parametrize("since", ["-1", "abc", "1.5", "9" * 30, ""])
async def test_bad_since_is_refused(staff, since):
    from channels.testing import WebsocketCommunicator

    from .wsclient import APP, ORIGIN

    communicator = WebsocketCommunicator(APP, f"/ws/agent-channels/x/?since={since}",
                                         headers=[ORIGIN])
    communicator.scope["user"] = staff
    await communicator.connect()
    if since == "":
        assert (await recv(communicator))["type"] == "hello"
        await communicator.disconnect()
        return
    assert (await recv(communicator))["code"] == "invalid_since"
    assert (await communicator.receive_output(5))["code"] == 4400


async def test_invalid_channel_name_is_refused(staff):
    ws = await connect("x" * 201, staff)
    assert (await recv(ws))["code"] == "invalid_channel"
    assert (await ws.receive_output(5))["code"] == 4400


async def test_anonymous_users_are_refused():
    await apublish("private", "tick")
    ws = await connect("private", AnonymousUser())
    assert (await recv(ws))["code"] == "unauthenticated"
    assert (await ws.receive_output(5))["code"] == 4401


async def test_other_users_are_refused_and_owners_admitted(alice, django_user_model):
    bob = await sync_to_async(django_user_model.objects.create_user)("bob")
    await sync_to_async(publish)("alices", "tick", owner=alice)
    ws = await connect("alices", bob)
    assert (await recv(ws))["code"] == "forbidden"
    assert (await ws.receive_output(5))["code"] == 4403
    ws = await connect("alices", alice)
    assert (await recv(ws))["type"] == "hello"
    assert (await recv_events(ws, 1))[0]["seq"] == 1
    await ws.disconnect()


@pytest.mark.parametrize("origin", [b"http://evil.example", b"null", None, b"localhost"])
async def test_foreign_or_missing_origins_are_refused(staff, origin):
    headers = [] if origin is None else [(b"origin", origin)]
    ws = await connect("o", staff, headers=headers)
    assert (await recv(ws))["code"] == "origin_not_allowed"
    assert (await ws.receive_output(5))["code"] == 4403


async def test_client_frames_are_persisted_acked_and_handed_to_the_runtime(staff):
    layer = get_channel_layer()
    runtime = await layer.new_channel()
    await layer.group_add(control_group("ctl"), runtime)
    ws = await connect("ctl", staff)
    await recv(ws)
    await ws.send_to(text_data=json.dumps({"type": "input", "id": "q1", "data": {"text": "hi"}}))
    await ws.send_to(text_data=json.dumps({"type": "interrupt"}))
    await ws.send_to(text_data=json.dumps({"type": "cancel", "id": 7}))
    frames = [await recv(ws) for _ in range(5)]
    acks = [f for f in frames if f["type"] == "ack"]
    events = [f for f in frames if f["type"] == "event"]
    assert [(a["id"], a["seq"]) for a in acks] == [("q1", 1), (7, 3)]
    assert [e["event"] for e in events] == ["client.input", "client.interrupt", "client.cancel"]
    assert events[0]["data"] == {"data": {"text": "hi"}, "id": "q1", "user": staff.pk}
    received = [await asyncio.wait_for(layer.receive(runtime), 5) for _ in range(3)]
    assert [(m["kind"], m["seq"]) for m in received] == [("input", 1), ("interrupt", 2),
                                                          ("cancel", 3)]
    assert received[0]["data"] == {"text": "hi"} and received[0]["channel"] == "ctl"
    await ws.disconnect()


BAD_FRAMES = [
    ("not json", "invalid_json"),
    ("[1, 2]", "invalid_frame"),
    ('{"type": "launch"}', "unknown_type"),
    ('{"type": "input"}', "invalid_frame"),
    ('{"type": "input", "data": 1, "id": true}', "invalid_frame"),
    ('{"type": "input", "data": 1, "extra": 1}', "invalid_frame"),
    ('{"no": "type"}', "invalid_frame"),
]


async def test_bad_frames_get_error_frames_and_the_connection_stays_usable(staff):
    ws = await connect("bad", staff)
    await recv(ws)
    for text, code in BAD_FRAMES:
        await ws.send_to(text_data=text)
        frame = await recv(ws)
        assert frame["type"] == "error" and frame["code"] == code, (text, frame)
    await ws.send_to(bytes_data=b"\x00\x01")
    assert (await recv(ws))["code"] == "binary_not_supported"
    await ws.send_to(text_data=json.dumps({"type": "input", "data": "é" * 40_000}))
    assert (await recv(ws))["code"] == "too_large"
    assert await sync_to_async(Event.objects.count)() == 0
    await ws.send_to(text_data=json.dumps({"type": "ping", "id": "p"}))
    assert await recv(ws) == {"type": "pong", "id": "p"}
    await ws.send_to(text_data=json.dumps({"type": "input", "data": "ok", "id": 1}))
    assert {(await recv(ws))["type"], (await recv(ws))["type"]} == {"ack", "event"}
    await ws.disconnect()


async def test_too_frequent_frames_are_rate_limited(staff, settings):
    settings.AGENT_CHANNELS = {"CLIENT_RATE": 0.001, "CLIENT_BURST": 3}
    ws = await connect("rate", staff)
    await recv(ws)
    for _ in range(5):
        await ws.send_to(text_data=json.dumps({"type": "ping"}))
    frames = [await recv(ws) for _ in range(5)]
    assert [f["type"] for f in frames] == ["pong"] * 3 + ["error"] * 2
    assert frames[-1]["code"] == "rate_limited"
    await ws.disconnect()


async def test_read_only_users_may_not_send(alice, settings):
    settings.AGENT_CHANNELS = {"ACCESS_POLICY": "tests.policies.ReadOnlyPolicy"}
    ws = await connect("ro", alice)
    assert (await recv(ws))["can_send"] is False
    await ws.send_to(text_data=json.dumps({"type": "input", "data": 1, "id": "x"}))
    assert await recv(ws) == {"type": "error", "code": "forbidden", "id": "x",
                              "message": "You may follow this channel but not send to it."}
    assert not await sync_to_async(Channel.objects.filter(name="ro").exists)()
    await ws.disconnect()


async def test_a_name_with_a_newline_is_refused_with_a_reason(staff):
    ws = await connect("line\nbreak", staff)
    assert (await recv(ws))["code"] == "invalid_channel"
    assert (await ws.receive_output(5))["code"] == 4400


async def test_non_ascii_digits_in_since_are_refused(staff):
    from channels.testing import WebsocketCommunicator

    from .wsclient import APP, ORIGIN

    communicator = WebsocketCommunicator(APP, "/ws/agent-channels/x/?since=%C2%B2",
                                         headers=[ORIGIN])
    communicator.scope["user"] = staff
    await communicator.connect()
    assert (await recv(communicator))["code"] == "invalid_since"


def test_a_broken_policy_setting_denies_instead_of_crashing(settings, staff):
    from agent_channels.access import get_access_policy

    settings.AGENT_CHANNELS = {"ACCESS_POLICY": 42}
    assert get_access_policy().can_read(staff, "x") is False


async def test_a_database_failure_on_connect_gets_an_error_frame_not_a_dead_socket(staff,
                                                                                  monkeypatch):
    from agent_channels.ws.consumer import ChannelConsumer

    async def broken(self):
        raise ConnectionError("database is down")

    monkeypatch.setattr(ChannelConsumer, "_head", broken)
    ws = await connect("down", staff)
    assert (await recv(ws))["code"] == "unavailable"
    assert (await ws.receive_output(5))["code"] == 4500


async def test_a_layer_failure_handing_over_a_frame_still_acks_the_stored_frame(staff,
                                                                               monkeypatch):
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    group_send = layer.group_send

    async def broken(group, message):
        if group.startswith("agctl."):  # the control group only: events still go out
            raise ConnectionError("redis is down")
        await group_send(group, message)

    monkeypatch.setattr(layer, "group_send", broken)
    ws = await connect("nolayer", staff)
    await recv(ws)
    await ws.send_to(text_data=json.dumps({"type": "cancel", "id": "c"}))
    frames = [await recv(ws), await recv(ws)]
    assert {"type": "ack", "id": "c", "seq": 1} in frames
    assert await sync_to_async(Event.objects.filter(name="client.cancel").count)() == 1
    await ws.disconnect()


@pytest.mark.parametrize("check_ms", [50, 0])
async def test_a_dropped_tail_is_fetched_once_the_stream_goes_quiet(staff, settings, check_ms):
    settings.AGENT_CHANNELS = {"HEAD_CHECK_MS": check_ms}
    ws = await connect("tail", staff)
    await recv(ws)
    await apublish("tail", "tick", {"i": 0})
    assert (await recv_events(ws, 1))[0]["seq"] == 1
    # The last events of the burst never reach the layer, and nothing follows them.
    await sync_to_async(append)("tail", [EventDraft("tick", {"i": i}) for i in (1, 2)],
                                notify=False)
    if check_ms:
        assert [f["seq"] for f in await recv_events(ws, 2, timeout=5)] == [2, 3]
    else:
        assert await ws.receive_nothing(0.5)
    await ws.disconnect()


# -- access is re-checked while the socket lives ---------------------------------------


async def test_a_deactivated_user_is_cut_off_by_the_periodic_recheck(alice, settings):
    settings.AGENT_CHANNELS = {"ACCESS_RECHECK_SECONDS": 0.05}
    await sync_to_async(publish)("mine", "tick", owner=alice)
    ws = await connect("mine", alice)
    await recv(ws)
    await recv_events(ws, 1)
    # Several rechecks pass while access holds: the socket stays open and live.
    await asyncio.sleep(0.3)
    await apublish("mine", "tick")
    assert (await recv_events(ws, 1))[0]["seq"] == 2
    alice.is_active = False
    await sync_to_async(alice.save)()
    frame = await recv(ws)
    assert frame["type"] == "error" and frame["code"] == "access_revoked"
    assert (await ws.receive_output(5))["code"] == 4403


async def test_a_user_who_loses_the_channel_is_cut_off(alice, django_user_model, settings):
    settings.AGENT_CHANNELS = {"ACCESS_RECHECK_SECONDS": 0.05}
    bob = await sync_to_async(django_user_model.objects.create_user)("bob")
    await sync_to_async(publish)("moved", "tick", owner=alice)
    ws = await connect("moved", alice)
    await recv(ws)
    await recv_events(ws, 1)
    await sync_to_async(Channel.objects.filter(name="moved").update)(owner=bob)
    assert (await recv(ws))["code"] == "access_revoked"
    assert (await ws.receive_output(5))["code"] == 4403


async def test_a_control_frame_rechecks_access_before_it_is_stored(alice, settings):
    settings.AGENT_CHANNELS = {"ACCESS_RECHECK_SECONDS": 0}  # only the frame can notice
    await sync_to_async(publish)("frames", "tick", owner=alice)
    ws = await connect("frames", alice)
    await recv(ws)
    await recv_events(ws, 1)
    alice.is_active = False
    await sync_to_async(alice.save)()
    await ws.send_to(text_data=json.dumps({"type": "input", "id": "q", "data": "hi"}))
    assert (await recv(ws))["code"] == "access_revoked"
    assert (await ws.receive_output(5))["code"] == 4403
    assert not await sync_to_async(Event.objects.filter(name="client.input").exists)()


async def test_logging_out_closes_a_socket_opened_with_the_session(alice, settings):
    from channels.testing import WebsocketCommunicator
    from django.test import Client

    from .asgi import application
    from .wsclient import ORIGIN, path_for

    settings.AGENT_CHANNELS = {"ACCESS_RECHECK_SECONDS": 0.05}
    await sync_to_async(publish)("session", "tick", owner=alice)
    client = Client()
    await sync_to_async(client.force_login)(alice)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.session.session_key}".encode()
    ws = WebsocketCommunicator(application, path_for("session"),
                               headers=[ORIGIN, (b"cookie", cookie)])
    assert (await ws.connect())[0]
    assert (await recv(ws))["type"] == "hello"
    await recv_events(ws, 1)
    await asyncio.sleep(0.2)
    await apublish("session", "tick")
    assert (await recv_events(ws, 1))[0]["seq"] == 2
    await sync_to_async(client.logout)()
    assert (await recv(ws))["code"] == "access_revoked"
    assert (await ws.receive_output(5))["code"] == 4403


async def test_batch_opt_in_replays_several_events_per_message_then_goes_live(staff, settings):
    from channels.testing import WebsocketCommunicator

    from agent_channels.ws.pump import BATCH_BYTES

    from .wsclient import APP, ORIGIN, path_for

    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "REPLAY_BATCH_SIZE": 400}
    pad = "x" * 300  # about 220 frames per batch message
    await sync_to_async(append)("batched", [EventDraft("tick", {"i": i, "pad": pad})
                                            for i in range(1000)])
    ws = WebsocketCommunicator(APP, path_for("batched", 0) + "&batch=1", headers=[ORIGIN])
    ws.scope["user"] = staff
    assert (await ws.connect())[0]
    assert (await recv(ws))["type"] == "hello"
    seqs, messages = [], 0
    while len(seqs) < 1000:
        text = await ws.receive_from(5)
        frame = json.loads(text)
        assert frame["type"] == "events"
        assert len(text) < BATCH_BYTES + 1000
        messages += 1
        for event in frame["events"]:
            assert event["type"] == "event" and event["data"]["i"] == event["seq"] - 1
            seqs.append(event["seq"])
    assert seqs == list(range(1, 1001))
    assert 4 < messages < 20  # batched, and split at the size bound and the page bound
    await apublish("batched", "tick", {"i": 1000})
    live = await recv(ws)
    assert live["type"] == "event" and live["seq"] == 1001  # live events come one by one
    assert await ws.receive_nothing(0.2)
    await ws.disconnect()


@pytest.mark.parametrize("failures", [2, 1000])
async def test_a_database_blip_while_replaying_is_ridden_out_or_answered_unavailable(
    staff, settings, monkeypatch, failures
):
    from django.db import OperationalError

    from agent_channels.ws import pump

    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "DB_RETRY_SECONDS": 1.0,
                               "REPLAY_BATCH_SIZE": 10}
    await sync_to_async(append)("blip-replay", [EventDraft("tick", {"i": i}) for i in range(30)])
    real, calls = pump.read_frames, []

    def flaky(*args):
        calls.append(args)
        if len(calls) in range(2, 2 + failures):  # the second page onwards, for a while
            raise OperationalError("server closed the connection unexpectedly")
        return real(*args)

    monkeypatch.setattr(pump, "read_frames", flaky)
    ws = await connect("blip-replay", staff)
    await recv(ws)
    if failures == 2:
        frames = await recv_events(ws, 30)
        assert [f["seq"] for f in frames] == list(range(1, 31))
        assert await ws.receive_nothing(0.2)  # still open
        await ws.disconnect()
        return
    seqs = []
    while True:
        frame = await recv(ws)
        if frame["type"] != "event":
            break
        seqs.append(frame["seq"])
    assert seqs == list(range(1, 11))
    assert frame["type"] == "error" and frame["code"] == "unavailable"
    assert (await ws.receive_output())["code"] == 4500
