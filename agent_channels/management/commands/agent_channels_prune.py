"""``manage.py agent_channels_prune``: delete old events by age and/or count."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from agent_channels.channel.retention import prune

_DURATION = re.compile(r"^([0-9]+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(value: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"15m"`` or ``"90s"`` as a timedelta, else CommandError."""
    match = _DURATION.fullmatch(value.strip())
    if not match:
        raise CommandError(f"Invalid duration {value!r}: use a number and s, m, h or d (e.g. 7d).")
    try:
        return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        raise CommandError(f"Invalid duration {value!r}: too long.") from None


def cutoff(value: str) -> datetime:
    """The moment ``value`` (a duration) ago; events created before it are old."""
    age = parse_duration(value)
    try:
        return timezone.now() - age
    except OverflowError:
        raise CommandError(f"Invalid duration {value!r}: reaches before year 1.") from None


class Command(BaseCommand):
    help = "Delete events older than a given age and/or beyond the newest N per channel."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", help="e.g. 30d, 12h: delete events older than this.")
        parser.add_argument(
            "--keep-last", type=int, help="Keep only the newest N events per channel."
        )
        parser.add_argument("--channel", help="Only this channel.")
        parser.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["older_than"] is None and options["keep_last"] is None:
            raise CommandError("Give --older-than, --keep-last, or both.")
        if options["keep_last"] is not None and options["keep_last"] < 0:
            raise CommandError("--keep-last must be 0 or more.")
        older_than = cutoff(options["older_than"]) if options["older_than"] is not None else None
        result = prune(
            older_than=older_than,
            keep_last=options["keep_last"],
            channel=options["channel"],
            dry_run=options["dry_run"],
        )
        verb = "Would delete" if options["dry_run"] else "Deleted"
        self.stdout.write(f"{verb} {result.events} events from {result.channels} channels.")
