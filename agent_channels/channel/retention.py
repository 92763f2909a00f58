"""Retention: deleting old events while keeping seqs unique and resumes honest.

Only a prefix of a channel's log is ever deleted, and ``Channel.pruned_seq`` records
how far, so a client resuming from a pruned position is told so instead of silently
skipping events. The channel row (with ``last_seq``) stays, so seqs are never reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Max

from agent_channels.models import Channel, Event

__all__ = ["PruneResult", "prune"]

DELETE_BATCH = 5000


@dataclass
class PruneResult:
    """What :func:`prune` deleted (or, with ``dry_run``, would delete)."""

    #: Channels that lost at least one event.
    channels: int = 0
    #: Events deleted.
    events: int = 0


def _targets(
    older_than: datetime | None, keep_last: int | None, channel: str | None
) -> dict[int, int]:
    """channel_id -> the highest seq to delete."""
    channels = Channel.objects.all()
    if channel is not None:
        channels = channels.filter(name=channel)
    targets: dict[int, int] = {}
    if keep_last is not None:
        for channel_id, last_seq, pruned_seq in channels.values_list(
            "id", "last_seq", "pruned_seq"
        ):
            through = last_seq - keep_last
            if through > pruned_seq:
                targets[channel_id] = through
    if older_than is not None:
        events = Event.objects.filter(created_at__lt=older_than, channel__in=channels)
        for row in events.values("channel_id").annotate(through=Max("seq")):
            channel_id, through = row["channel_id"], row["through"]
            targets[channel_id] = max(targets.get(channel_id, 0), through)
    return targets


def prune(
    *,
    older_than: datetime | None = None,
    keep_last: int | None = None,
    channel: str | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Delete events created before ``older_than`` and/or all but the ``keep_last`` newest
    of each channel (either rule suffices to delete an event)."""
    if older_than is None and keep_last is None:
        raise ValueError("Give older_than, keep_last, or both.")
    result = PruneResult()
    for channel_id, through in _targets(older_than, keep_last, channel).items():
        events = Event.objects.filter(channel_id=channel_id, seq__lte=through)
        if dry_run:
            count = events.count()
        else:
            count = 0
            with transaction.atomic():
                # Mark first: a resume racing the delete is refused rather than shown a gap.
                Channel.objects.filter(id=channel_id, pruned_seq__lt=through).update(
                    pruned_seq=through
                )
            while True:
                ids = list(events.values_list("id", flat=True)[:DELETE_BATCH])
                if not ids:
                    break
                count += Event.objects.filter(id__in=ids).delete()[0]
        if count:
            result.channels += 1
            result.events += count
    return result
