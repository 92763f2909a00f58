"""Coalesced token streams: fewer rows for bursts, no delay for slow streams."""

import time

import pytest
from django.db import transaction

from agent_channels import MessageStream, publish, stream_message
from agent_channels.models import Event

pytestmark = pytest.mark.django_db(transaction=True)


def events(channel, name=None):
    qs = Event.objects.filter(channel__name=channel).order_by("seq")
    if name:
        qs = qs.filter(name=name)
    return list(qs)


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_a_burst_is_coalesced_and_the_deltas_add_up_to_the_text():
    tokens = [f"tok{i} " for i in range(1000)]
    with stream_message("burst", message_id="m1") as message:
        for token in tokens:
            message.write(token)
    deltas = events("burst", "message.delta")
    completed = events("burst", "message.completed")
    assert len(completed) == 1 and completed[0].data["text"] == "".join(tokens)
    assert "".join(d.data["text"] for d in deltas) == "".join(tokens)
    assert all(d.data["message_id"] == "m1" for d in deltas)
    assert len(deltas) < 100, "1,000 tokens written at once must not become 1,000 rows"
    assert events("burst")[-1].name == "message.completed"


def test_the_first_delta_after_a_quiet_window_is_published_at_once():
    message = MessageStream("slow", window_ms=20)
    for i in range(3):
        message.write(f"t{i}")
        # Published synchronously by write(): no waiting for a timer.
        assert [d.data["text"] for d in events("slow", "message.delta")][-1] == f"t{i}"
        time.sleep(0.03)
    message.complete()
    assert len(events("slow", "message.delta")) == 3


def test_a_buffered_tail_is_flushed_by_the_timer_without_another_write():
    # A window long enough that a loaded machine does not pass it before the first assert.
    message = MessageStream("tail", window_ms=1000)
    message.write("a")
    message.write("b")  # inside the window: buffered
    assert [d.data["text"] for d in events("tail", "message.delta")] == ["a"]
    assert wait_until(lambda: len(events("tail", "message.delta")) == 2)
    assert events("tail", "message.delta")[1].data["text"] == "b"
    message.complete()


def test_publish_on_the_same_channel_flushes_pending_deltas_first():
    message = MessageStream("order", window_ms=10_000)
    message.write("first ")
    message.write("second")
    publish("order", "tool.started", {"name": "calc"})
    names = [(e.name, e.data.get("text")) for e in events("order")]
    assert names == [("message.delta", "first "), ("message.delta", "second"),
                     ("tool.started", None)]
    message.complete()


def test_an_exception_aborts_the_message_and_keeps_the_partial_text():
    with pytest.raises(ValueError), stream_message("boom") as message:
        message.write("partial")
        raise ValueError("model died")
    aborted = events("boom", "message.aborted")
    assert aborted[0].data["text"] == "partial" and aborted[0].data["reason"] == "ValueError"
    with pytest.raises(RuntimeError, match="closed"):
        message.write("more")


def test_bad_deltas_are_rejected():
    message = MessageStream("types")
    with pytest.raises(TypeError):
        message.write(b"bytes")  # type: ignore[arg-type]
    message.write("")
    message.complete()
    assert [e.name for e in events("types")] == ["message.completed"]


def test_inside_a_transaction_no_timer_flushes_and_the_text_is_complete():
    with transaction.atomic():
        message = MessageStream("atomic", window_ms=5)
        for i in range(50):
            message.write(f"{i},")
        message.complete()
    completed = events("atomic", "message.completed")[0].data["text"]
    assert completed == "".join(f"{i}," for i in range(50))
    assert "".join(d.data["text"] for d in events("atomic", "message.delta")) == completed
