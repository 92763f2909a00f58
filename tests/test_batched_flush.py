"""Many streams in one process: their deltas are committed together, one transaction per
window (``append_many``), with every guarantee of single appends kept."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import OperationalError, connection

from agent_channels import MessageStream, publish
from agent_channels.channel import publishing
from agent_channels.channel.log import EventDraft, append_many
from agent_channels.models import Event

pytestmark = pytest.mark.django_db(transaction=True)


def rows(channel: str) -> list[tuple[int, str, dict]]:
    return list(
        Event.objects.filter(channel__name=channel)
        .order_by("seq")
        .values_list("seq", "name", "data")
    )


def stream_together(
    channels: list[str], tokens: int, gap: float, token: Callable[[str, int], str]
) -> dict[str, str]:
    """One thread per channel, started together, each writing ``tokens`` tokens ``gap``
    seconds apart into a MessageStream with a 30 ms window; the texts they wrote."""
    texts: dict[str, str] = {}
    start = threading.Barrier(len(channels))

    def run(name: str) -> None:
        message = MessageStream(name, message_id=name, window_ms=30)
        start.wait(10)
        for i in range(tokens):
            message.write(token(name, i))
            time.sleep(gap)
        message.complete()
        texts[name] = message.text
        connection.close()  # this thread's: the test database is dropped at the end

    threads = [threading.Thread(target=run, args=(name,)) for name in channels]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return texts


def test_append_many_gives_each_channel_its_next_seqs_in_one_commit():
    publish("many-a", "setup")
    publish("many-b", "setup")
    publish("many-b", "setup")
    out = append_many(
        [
            ("many-a", [EventDraft("x", {"i": 1}), EventDraft("y", {"i": 2})]),
            ("many-b", [EventDraft("x", {"i": 3})]),
            ("many-a", [EventDraft("z", {"i": 4})]),  # the same channel again: after the first
        ]
    )
    assert [[(e.seq, e.name) for e in batch] for batch in out] == [
        [(2, "x"), (3, "y")],
        [(3, "x")],
        [(4, "z")],
    ]
    assert rows("many-a")[1:] == [(2, "x", {"i": 1}), (3, "y", {"i": 2}), (4, "z", {"i": 4})]
    assert rows("many-b")[2:] == [(3, "x", {"i": 3})]
    # One write: one timestamp on every event of every channel.
    stamps = set(
        Event.objects.filter(channel__name__in=["many-a", "many-b"], seq__gt=2).values_list(
            "created_at", flat=True
        )
    )
    assert len(stamps) == 1


# Names and data a hand-built statement could get wrong: quotes, backslashes, text that
# looks like an escape, characters outside the BMP, a JSON null, nesting, numbers.
AWKWARD_CHANNELS = ['many-"q"', "many-\\back\\", "many-'s", "many-\U0001f600"]
AWKWARD_DATA = [
    {"text": 'say "hi"\\n', "n": None, "f": 1.5, "big": 2**60},
    {"text": "\\u0000 is not a NUL; é ✓ \U0001f600", "nested": {"a": [1, {"b": []}]}},
    {},
]


@pytest.mark.parametrize("returning", [True, False])
def test_append_many_stores_and_sends_awkward_names_and_data_exactly(monkeypatch, returning):
    from agent_channels.channel import wire as wire_module
    from agent_channels.models import Channel, Run

    for name in AWKWARD_CHANNELS:
        publish(name, "setup")
    run = Run.objects.create(channel=Channel.objects.get(name=AWKWARD_CHANNELS[0]), agent="x")
    sent: dict[str, list[tuple[int, list[str]]]] = {}

    def record(self: Any, batches: Any) -> None:
        for channel, first_seq, texts in batches:
            sent.setdefault(channel, []).append((first_seq, texts))

    monkeypatch.setattr(wire_module.LiveWire, "send_events_many", record)
    batches = [
        (
            name,
            [
                EventDraft(f'ev "{i}" \\', data, run.pk if i == 0 else None)
                for i, data in enumerate(AWKWARD_DATA)
            ],
        )
        for name in AWKWARD_CHANNELS
    ]
    out = append_many(batches, returning=returning)
    for name, drafts in batches:
        stored = list(Event.objects.filter(channel__name=name, seq__gt=1).order_by("seq"))
        assert [(e.seq, e.name, e.data, e.run_id) for e in stored] == [
            (2 + i, d.name, d.data, d.run_id) for i, d in enumerate(drafts)
        ]
        # The live frames are the stored events' frames, byte for byte once parsed.
        ((first_seq, texts),) = sent[name]
        assert first_seq == 2
        assert [json.loads(t) for t in texts] == [
            json.loads(json.dumps(e.to_frame())) for e in stored
        ]
    if returning:
        assert out is not None
        assert [[(e.pk, e.seq, e.data) for e in batch] for batch in out] == [
            [
                (e.pk, e.seq, e.data)
                for e in Event.objects.filter(channel__name=name, seq__gt=1).order_by("seq")
            ]
            for name, _ in batches
        ]
    else:
        assert out is None


def test_append_many_refuses_a_channel_that_does_not_exist_and_writes_nothing():
    publish("many-c", "setup")
    with pytest.raises(ValueError, match="many-missing"):
        append_many([("many-c", [EventDraft("x")]), ("many-missing", [EventDraft("x")])])
    assert [r[1] for r in rows("many-c")] == ["setup"]


@pytest.mark.parametrize("when", ["before", "after"])
def test_append_many_whose_connection_breaks_is_written_exactly_once(when):
    publish("many-d", "setup")
    publish("many-e", "setup")
    failed = []

    def breaker(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "INSERT" in sql.upper() and not failed:
            failed.append(sql)
            if when == "after":
                execute(sql, params, many, context)  # it ran; the transaction is lost
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(breaker):
        append_many([("many-d", [EventDraft("a", {"i": 1})]), ("many-e", [EventDraft("b")])])
    assert failed
    assert rows("many-d") == [(1, "setup", {}), (2, "a", {"i": 1})]
    assert rows("many-e") == [(1, "setup", {}), (2, "b", {})]


def test_a_busy_process_flushes_its_streams_together_and_nothing_is_lost_or_reordered():
    """20 streams writing a token every 40 ms (slower than the 30 ms window, so each token
    would be a commit of its own): once the process is busy they share commits."""
    streams = 20
    tokens = 15
    channels = [f"busy-{i}" for i in range(streams)]
    for name in channels:
        publish(name, "setup")
    texts = stream_together(channels, tokens, 0.04, lambda name, i: f"{name}:{i} ")
    assert len(texts) == streams
    stamps: set[Any] = set()
    deltas = 0
    for name in channels:
        events = list(Event.objects.filter(channel__name=name).order_by("seq"))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].name == "message.completed"
        body = [e for e in events if e.name == "message.delta"]
        assert "".join(e.data["text"] for e in body) == texts[name]
        assert texts[name] == "".join(f"{name}:{i} " for i in range(tokens))
        assert events[-1].data["text"] == texts[name]
        stamps |= {e.created_at for e in body}
        deltas += len(body)
    # A commit of its own per delta gives each its own timestamp; a shared commit, one for all.
    assert len(stamps) < deltas * 0.6, f"{len(stamps)} writes for {deltas} deltas"


def test_a_quiet_process_still_publishes_a_delta_at_once():
    publishing._load = publishing._Load()  # nothing flushed lately
    message = MessageStream("quiet-one", window_ms=30)
    message.write("now")
    assert [r[2].get("text") for r in rows("quiet-one")] == ["now"]
    message.complete()


def test_in_a_busy_process_a_delta_waits_at_most_one_slot():
    publishing._load = publishing._Load()
    publish("busy-slot", "setup")
    publishing._load.note(time.monotonic(), publishing.BATCH_MIN_STREAMS)  # busy now
    message = MessageStream("busy-slot", window_ms=30)
    started = time.monotonic()
    message.write("later")
    deadline = started + 5
    while len(rows("busy-slot")) < 2 and time.monotonic() < deadline:
        time.sleep(0.002)
    waited = time.monotonic() - started
    assert [r[2].get("text") for r in rows("busy-slot")][1:] == ["later"]
    # One 30 ms slot plus the commit; generous for a loaded machine, far below a stall.
    assert waited < 1.0, waited
    message.complete()
    publishing._load = publishing._Load()


def test_a_zero_window_stays_one_row_per_write_even_in_a_busy_process():
    publishing._load = publishing._Load()
    publish("busy-zero", "setup")
    publishing._load.note(time.monotonic(), publishing.BATCH_MIN_STREAMS)
    message = MessageStream("busy-zero", window_ms=0)
    for token in ("a", "b", "c"):
        message.write(token)
        assert rows("busy-zero")[-1][2].get("text") == token  # stored by write() itself
    message.complete()
    publishing._load = publishing._Load()


# -- the slot stretches under load --------------------------------------------------------


def test_a_strained_slot_doubles_up_to_the_widest_window_and_narrows_when_calm(settings):
    settings.AGENT_CHANNELS = {"COALESCE_MAX_WINDOW_MS": 250}
    load = publishing._Load()
    load.note(time.monotonic(), publishing.BATCH_MIN_STREAMS)
    base = publishing.BATCH_SLOT
    assert load.slot(0.03) == pytest.approx(0.03) and load.slot(1.0) == pytest.approx(base)
    slots = []
    for _ in range(6):  # each flush starts on time but takes three quarters of its slot
        slot = load.slot(1.0)
        load.batch_done(slot, late=0.0, took=slot * 0.75)
        slots.append(round(load.slot(1.0), 3))
    assert slots == [0.1, 0.2, 0.25, 0.25, 0.25, 0.25]
    load.batch_done(0.25, late=0.2, took=0.0)  # late, not slow: strained all the same
    assert load.slot(1.0) == pytest.approx(0.25)
    for _ in range(publishing.CALM_BATCHES - 1):
        load.batch_done(load.slot(1.0), late=0.0, took=0.001)
    assert load.slot(1.0) == pytest.approx(0.25)
    load.batch_done(load.slot(1.0), late=0.0, took=0.001)
    assert load.slot(1.0) == pytest.approx(0.2)  # stretch 4: 0.05 × 4, under the 0.25 cap
    load.batch_done(load.slot(1.0), late=0.0, took=0.05)  # in between: neither
    assert load.slot(1.0) == pytest.approx(0.2)
    # A process that goes quiet starts its next burst from the narrowest slot.
    assert not load.busy(time.monotonic() + 10)
    assert load.slot(1.0) == pytest.approx(base)


def test_a_zero_widest_window_keeps_the_slot_fixed(settings):
    settings.AGENT_CHANNELS = {"COALESCE_MAX_WINDOW_MS": 0}
    load = publishing._Load()
    for _ in range(5):
        load.batch_done(load.slot(1.0), late=0.5, took=0.5)
    assert load.slot(1.0) == pytest.approx(publishing.BATCH_SLOT)


@pytest.mark.parametrize("widest_ms", [400, 0])
def test_a_slow_database_gets_fewer_bigger_deltas_instead_of_a_backlog(
    settings, monkeypatch, widest_ms
):
    """Every batched commit takes 40 ms (a slot is 30 ms): stretching the slot turns the
    same tokens into fewer deltas, with every guarantee of the log kept."""
    settings.AGENT_CHANNELS = {"COALESCE_MAX_WINDOW_MS": widest_ms}
    publishing._load = publishing._Load()
    real = publishing.append_many
    stretches: list[int] = []

    def slow_append_many(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.04)
        stretches.append(publishing._load.stretch)
        return real(*args, **kwargs)

    monkeypatch.setattr(publishing, "append_many", slow_append_many)
    streams, tokens = 12, 60
    channels = [f"strained-{widest_ms}-{i}" for i in range(streams)]
    for name in channels:
        publish(name, "setup")
    texts = stream_together(channels, tokens, 0.01, lambda name, i: f"{i} ")
    publishing._load = publishing._Load()
    assert len(texts) == streams and stretches, (len(texts), len(stretches))
    deltas = 0
    for name in channels:
        events = list(Event.objects.filter(channel__name=name).order_by("seq"))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        body = [e.data["text"] for e in events if e.name == "message.delta"]
        assert "".join(body) == texts[name] == "".join(f"{i} " for i in range(tokens))
        deltas += len(body)
    if widest_ms:
        assert max(stretches) >= 4, stretches  # 30 → 60 → 120 → 240 ms
        assert deltas <= streams * tokens / 4, deltas
    else:
        assert set(stretches) == {1}
