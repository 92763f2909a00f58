"""A backlog of live sends goes out merged per group, each group's order kept."""

import asyncio
import random
import threading

from agent_channels.channel.wire import EVENTS_MESSAGE, SEND_CONCURRENCY, LiveWire, merge_backlog


def events(first: int, *texts: str) -> dict:
    return {
        "type": EVENTS_MESSAGE,
        "first": first,
        "last": first + len(texts) - 1,
        "texts": list(texts),
    }


def test_consecutive_events_of_a_group_travel_as_one_message():
    batch = [
        ("a", events(1, "a1")),
        ("b", events(7, "b7")),
        ("a", events(2, "a2", "a3")),
        ("b", events(8, "b8")),
    ]
    assert merge_backlog(batch) == [
        ("a", events(1, "a1", "a2", "a3"), 2),
        ("b", events(7, "b7", "b8"), 2),
    ]


def test_gaps_notifications_other_messages_and_size_keep_messages_apart(settings):
    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "MAX_WIRE_FRAME_BYTES": 10}
    notification = {"type": EVENTS_MESSAGE, "first": 4, "last": 4, "texts": None}
    other = {"type": "something.else"}
    batch = [
        ("a", events(1, "x")),
        ("a", events(3, "y")),  # a gap: seq 2 went elsewhere
        ("a", notification),  # too large to carry: travels alone
        ("a", events(5, "z")),
        ("a", other),
        ("a", events(6, "12345")),
        ("a", events(7, "123456")),  # 5 + 6 characters > 10
    ]
    assert merge_backlog(batch) == [(group, message, 1) for group, message in batch]


def test_an_empty_backlog_sends_nothing():
    assert merge_backlog([]) == []


class RecordingLayer:
    """A layer whose sends take a little while, and which remembers their order, how many
    overlapped, and fails every send to one group."""

    def __init__(self, failing: str = "") -> None:
        self.sent: dict[str, list[int]] = {}
        self.in_flight = 0
        self.most_in_flight = 0
        self.failing = failing

    async def group_send(self, group: str, message: dict) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(random.random() / 2000)
            if group == self.failing:
                raise ConnectionError("the layer is down for this group")
            self.sent.setdefault(group, []).extend(range(message["first"], message["last"] + 1))
        finally:
            self.in_flight -= 1


def fake_wire(layer: RecordingLayer) -> LiveWire:
    wire = LiveWire("default")
    wire.layer = layer
    wire._pipelined = None  # whatever the configured layer is
    return wire


def test_batches_from_many_threads_reach_every_group_in_order_sent_side_by_side():
    layer = RecordingLayer()
    wire = fake_wire(layer)
    groups = [f"g{i}" for i in range(60)]

    def publisher(offset: int) -> None:
        # Each thread owns some groups and announces seqs 1..40 on each, a batch per seq.
        mine = groups[offset::3]
        for seq in range(1, 41):
            assert wire.send_many([(group, events(seq, f"{group}:{seq}")) for group in mine])

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert wire.drain(30)
    assert layer.sent == {group: list(range(1, 41)) for group in groups}
    assert 1 < layer.most_in_flight <= SEND_CONCURRENCY
    wire.close()


def test_a_group_whose_sends_fail_holds_up_no_other_and_drain_still_ends(caplog):
    layer = RecordingLayer(failing="bad")
    wire = fake_wire(layer)
    for seq in range(1, 6):
        wire.send_events_many([])  # nothing to send: nothing queued
        assert wire.send_many([("bad", events(seq, "x")), ("good", events(seq, "y"))])
    assert wire.drain(10)
    assert layer.sent == {"good": [1, 2, 3, 4, 5]}
    assert "live send to bad failed" in caplog.text
    wire.close()
