import json

import pytest
from django.db import transaction

from agent_channels import InvalidChannelName, InvalidEvent, publish
from agent_channels.channel.log import EventDraft, append
from agent_channels.models import Channel, Event

pytestmark = pytest.mark.django_db(transaction=True)


def seqs(name):
    return list(Event.objects.filter(channel__name=name).values_list("seq", flat=True))


def test_seqs_start_at_one_and_are_contiguous():
    for i in range(5):
        assert publish("wf-1", "tick", {"i": i}).seq == i + 1
    assert seqs("wf-1") == [1, 2, 3, 4, 5]
    assert Channel.objects.get(name="wf-1").last_seq == 5


def test_channels_number_independently():
    publish("a", "x")
    publish("b", "x")
    assert publish("a", "x").seq == 2
    assert seqs("b") == [1]


def test_batch_append_assigns_consecutive_seqs():
    publish("batch", "first")
    events = append("batch", [EventDraft("e", {"n": n}) for n in range(10)])
    assert [e.seq for e in events] == list(range(2, 12))


def test_rolled_back_transaction_reuses_no_visible_seq_and_leaves_no_gap():
    publish("tx", "one")
    with pytest.raises(RuntimeError), transaction.atomic():
        publish("tx", "two")
        raise RuntimeError("boom")
    assert publish("tx", "three").seq == 2
    assert seqs("tx") == [1, 2]


def test_owner_is_set_when_the_channel_is_created(django_user_model):
    user = django_user_model.objects.create_user("owner")
    publish("mine", "x", owner=user)
    publish("mine", "y", owner=None)
    assert Channel.objects.get(name="mine").owner == user


@pytest.mark.parametrize(
    ("args", "error"),
    [(("", "x"), InvalidChannelName), (("c", ""), InvalidEvent), (("c", "x" * 101), InvalidEvent),
     (("c", "x", ["not", "a", "dict"]), InvalidEvent), (("c\n", "x"), InvalidChannelName)],
)
def test_bad_publishes_raise_clear_errors_and_store_nothing(args, error):
    with pytest.raises(error):
        publish(*args)
    assert Event.objects.count() == 0


@pytest.mark.parametrize(
    "data",
    [{"x": object()}, {"x": float("nan")}, {"x": [float("inf")]}, {"x": "nul\x00"},
     {"k\x00": 1}, {"x": "lone \ud800 surrogate"}],
)
def test_data_no_backend_can_store_is_refused_before_anything_is_written(data):
    publish("ser", "ok")
    with pytest.raises(InvalidEvent):
        publish("ser", "bad", data)
    assert seqs("ser") == [1]
    assert publish("ser", "ok", {"text": "a literal \\u0000 is fine", "emoji": "🚀"}).seq == 2


def test_frame_shape_matches_the_protocol():
    event = publish("frame", "message.delta", {"text": "<b>hi</b>"})
    frame = event.to_frame()
    assert set(frame) == {"type", "seq", "event", "run", "data", "ts"}
    assert frame["type"] == "event" and frame["run"] is None and frame["seq"] == 1
    assert json.loads(json.dumps(frame))["data"] == {"text": "<b>hi</b>"}



def test_replay_frames_are_the_events_frames_without_re_encoding(django_user_model):
    from agent_channels.channel.log import read, read_frames
    from agent_channels.models import Run

    user = django_user_model.objects.create_user("frames")
    run = Run.objects.create(channel=Channel.objects.create(name="frames", owner=user), agent="x")
    odd = {"text": "é \u2028 \\u0000 \"q\" <b>", "n": [1, 2.5, None, True], "nested": {"z": 1, "a": {}}}
    append("frames", [EventDraft("message.delta", odd, run.pk), EventDraft("x.y", {})])
    publish("frames", "tick")
    channel_id = Channel.objects.get(name="frames").pk
    frames = read_frames(channel_id, 0)
    assert [seq for seq, _ in frames] == [1, 2, 3]
    assert [json.loads(text) for _, text in frames] == [
        json.loads(json.dumps(e.to_frame())) for e in read(channel_id, 0)
    ]
    assert [seq for seq, _ in read_frames(channel_id, 1, 2)] == [2]
    assert read_frames(channel_id, 0, limit=1)[0][0] == 1

WRITER = """
import django, sys
django.setup()
from agent_channels import publish
from agent_channels.channel.log import EventDraft, append
writer = int(sys.argv[1]) if len(sys.argv) > 1 else {writer}
for i in range({count}):
    if i % 5 == 4:
        append("race", [EventDraft("w", {{"w": writer, "i": i, "b": k}}) for k in range(3)])
    else:
        publish("race", "w", {{"w": writer, "i": i}})
"""


def test_concurrent_writer_processes_get_contiguous_unique_seqs():
    import subprocess
    import sys

    from .procs import child_env

    writers, count = 4, 40
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER.format(writer=w, count=count)],
                         env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in range(writers)
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    per_writer_events = count + (count // 5) * 2  # every fifth publish is a batch of three
    expected = writers * per_writer_events
    events = list(Event.objects.filter(channel__name="race").order_by("seq"))
    assert [e.seq for e in events] == list(range(1, expected + 1))
    assert Channel.objects.get(name="race").last_seq == expected
    for w in range(writers):
        mine = [(e.data["i"], e.data.get("b", 0)) for e in events if e.data["w"] == w]
        assert mine == sorted(mine), "a writer's events must keep their order"
        assert len(mine) == per_writer_events
