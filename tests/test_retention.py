"""Retention: agent_channels_prune deletes a prefix of each log and never reuses a seq."""

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from agent_channels import publish
from agent_channels.channel.retention import prune
from agent_channels.models import Channel, Event

pytestmark = pytest.mark.django_db(transaction=True)


def prune_cmd(**options):
    out = io.StringIO()
    call_command("agent_channels_prune", stdout=out, **options)
    return out.getvalue().strip()


def fill(channel, count):
    for i in range(count):
        publish(channel, "tick", {"i": i})


def seqs(channel):
    return list(Event.objects.filter(channel__name=channel).values_list("seq", flat=True))


def channel_row(name):
    return Channel.objects.values("last_seq", "pruned_seq").get(name=name)


def age(channel, seqs_through, delta):
    Event.objects.filter(channel__name=channel, seq__lte=seqs_through).update(
        created_at=timezone.now() - delta
    )


def test_keep_last_keeps_the_newest_n_of_every_channel():
    fill("a", 10)
    fill("b", 3)
    assert prune_cmd(keep_last=4) == "Deleted 6 events from 1 channels."
    assert seqs("a") == [7, 8, 9, 10]
    assert seqs("b") == [1, 2, 3]
    assert channel_row("a") == {"last_seq": 10, "pruned_seq": 6}
    assert channel_row("b") == {"last_seq": 3, "pruned_seq": 0}


def test_keep_last_zero_empties_the_log_but_keeps_the_channel():
    fill("a", 5)
    assert prune_cmd(keep_last=0) == "Deleted 5 events from 1 channels."
    assert seqs("a") == []
    assert channel_row("a") == {"last_seq": 5, "pruned_seq": 5}


def test_publishing_after_a_prune_continues_the_seq():
    fill("a", 5)
    prune_cmd(keep_last=0)
    assert publish("a", "after").seq == 6
    assert seqs("a") == [6]
    assert channel_row("a") == {"last_seq": 6, "pruned_seq": 5}


def test_older_than_deletes_events_created_before_the_cutoff():
    fill("a", 6)
    age("a", 4, timedelta(hours=2))
    assert prune_cmd(older_than="1h") == "Deleted 4 events from 1 channels."
    assert seqs("a") == [5, 6]
    assert channel_row("a") == {"last_seq": 6, "pruned_seq": 4}


def test_older_than_leaves_recent_events_alone():
    fill("a", 3)
    age("a", 3, timedelta(minutes=30))
    assert prune_cmd(older_than="1h") == "Deleted 0 events from 0 channels."
    assert seqs("a") == [1, 2, 3]
    assert channel_row("a")["pruned_seq"] == 0


@pytest.mark.parametrize(
    ("value", "old", "young"),
    [("90s", timedelta(seconds=120), timedelta(seconds=60)),
     ("15m", timedelta(minutes=16), timedelta(minutes=14)),
     ("12h", timedelta(hours=13), timedelta(hours=11)),
     ("7d", timedelta(days=8), timedelta(days=6)),
     (" 7d ", timedelta(days=8), timedelta(days=6))],
)
def test_duration_units(value, old, young):
    fill("a", 2)
    age("a", 1, old)
    Event.objects.filter(channel__name="a", seq=2).update(created_at=timezone.now() - young)
    prune_cmd(older_than=value)
    assert seqs("a") == [2]


def test_either_rule_suffices_when_both_are_given():
    fill("by-count", 10)
    fill("by-age", 4)
    age("by-age", 3, timedelta(days=2))
    out = prune_cmd(keep_last=5, older_than="1d")
    assert out == "Deleted 8 events from 2 channels."
    assert seqs("by-count") == [6, 7, 8, 9, 10]
    assert seqs("by-age") == [4]


def test_both_rules_on_one_channel_delete_the_longer_prefix():
    fill("a", 10)
    age("a", 7, timedelta(days=2))
    prune_cmd(keep_last=5, older_than="1d")
    assert seqs("a") == [8, 9, 10]
    assert channel_row("a")["pruned_seq"] == 7


def test_only_a_prefix_is_deleted_even_if_timestamps_disagree():
    fill("a", 5)
    # Only seq 3 is old: everything up to it goes, so the log never has a hole.
    age("a", 3, timedelta(days=2))
    Event.objects.filter(channel__name="a", seq__lt=3).update(created_at=timezone.now())
    prune_cmd(older_than="1d")
    assert seqs("a") == [4, 5]


def test_channel_limits_the_prune_to_one_channel():
    fill("a/b: c", 5)
    fill("other", 5)
    assert prune_cmd(keep_last=1, channel="a/b: c") == "Deleted 4 events from 1 channels."
    assert seqs("a/b: c") == [5]
    assert seqs("other") == [1, 2, 3, 4, 5]


def test_unknown_channel_deletes_nothing():
    fill("a", 3)
    assert prune_cmd(keep_last=0, channel="nope") == "Deleted 0 events from 0 channels."
    assert seqs("a") == [1, 2, 3]


def test_dry_run_counts_and_deletes_nothing():
    fill("a", 10)
    fill("b", 2)
    age("b", 2, timedelta(days=3))
    assert prune_cmd(keep_last=3, older_than="1d", dry_run=True) == (
        "Would delete 9 events from 2 channels."
    )
    assert seqs("a") == list(range(1, 11))
    assert seqs("b") == [1, 2]
    assert channel_row("a") == {"last_seq": 10, "pruned_seq": 0}


def test_pruning_twice_is_idempotent_and_pruned_seq_never_decreases():
    fill("a", 10)
    prune_cmd(keep_last=3)
    assert prune_cmd(keep_last=3) == "Deleted 0 events from 0 channels."
    # A looser rule later does not move pruned_seq back.
    prune_cmd(keep_last=8)
    assert channel_row("a") == {"last_seq": 10, "pruned_seq": 7}
    assert seqs("a") == [8, 9, 10]


def test_last_seq_never_decreases():
    fill("a", 4)
    for options in ({"keep_last": 2}, {"keep_last": 0}, {"older_than": "0s"}):
        prune_cmd(**options)
        assert channel_row("a")["last_seq"] == 4
    assert publish("a", "x").seq == 5


def test_prune_deletes_in_batches(monkeypatch):
    from agent_channels.channel import retention

    monkeypatch.setattr(retention, "DELETE_BATCH", 3)
    fill("a", 11)
    assert prune(keep_last=1).events == 10
    assert seqs("a") == [11]


def test_prune_function_needs_a_rule():
    with pytest.raises(ValueError, match="older_than, keep_last"):
        prune()


def test_command_line_form():
    fill("a", 3)
    out = io.StringIO()
    call_command("agent_channels_prune", "--keep-last", "1", "--channel", "a", stdout=out)
    assert out.getvalue().strip() == "Deleted 2 events from 1 channels."


def test_missing_options_raise_command_error():
    with pytest.raises(CommandError, match=r"Give --older-than, --keep-last, or both\."):
        prune_cmd()
    with pytest.raises(CommandError, match="Give --older-than"):
        prune_cmd(channel="a", dry_run=True)


def test_negative_keep_last_raises_command_error():
    with pytest.raises(CommandError, match=r"--keep-last must be 0 or more\."):
        prune_cmd(keep_last=-1)


@pytest.mark.parametrize(
    "value",
    ["", "1", "h", "1w", "1.5h", "-1h", "1 h", "1H", "1hh", "one day", "1h\n2h", "١h", "²h",
     "99999999999d", "999999999d", "9" * 30 + "s"],
)
def test_bad_durations_raise_command_error(value):
    fill("a", 1)
    with pytest.raises(CommandError, match="Invalid duration"):
        prune_cmd(older_than=value)
    assert seqs("a") == [1]
