"""A backlog of live sends goes out merged per group, each group's order kept."""

from agent_channels.channel.wire import EVENTS_MESSAGE, merge_backlog


def events(first: int, *texts: str) -> dict:
    return {"type": EVENTS_MESSAGE, "first": first, "last": first + len(texts) - 1,
            "texts": list(texts)}


def test_consecutive_events_of_a_group_travel_as_one_message():
    batch = [("a", events(1, "a1")), ("b", events(7, "b7")), ("a", events(2, "a2", "a3")),
             ("b", events(8, "b8"))]
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
