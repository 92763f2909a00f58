"""Channel names: what users call a channel, and the Channels group it maps to.

A channel name is whatever the application uses as the workflow ID: 1–200 printable
characters, ``:``, ``/``, spaces and non-ASCII included. The channel layer only
accepts group names of ``[A-Za-z0-9._-]`` shorter than 100 characters, so the group
name is a readable ASCII prefix plus a SHA-256 digest of the full name: two different
names never share a group.
"""

from __future__ import annotations

import functools
import hashlib
import re

__all__ = ["MAX_NAME_LENGTH", "InvalidChannelName", "control_group", "event_group", "validate_name"]

MAX_NAME_LENGTH = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class InvalidChannelName(ValueError):
    """The string cannot be a channel name; ``str(exc)`` says why."""


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`InvalidChannelName`."""
    if not isinstance(name, str):
        raise InvalidChannelName("A channel name must be a string.")
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise InvalidChannelName(
            f"A channel name must be 1 to {MAX_NAME_LENGTH} characters long, not {len(name)}."
        )
    if not name.isprintable():
        raise InvalidChannelName("A channel name must not contain control characters.")
    return name


# Asked for every batch of events a process sends: the digest is worth remembering.
@functools.lru_cache(maxsize=4096)
def _group(prefix: str, name: str) -> str:
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:40]
    readable = _UNSAFE.sub("_", name)[:40]
    return f"{prefix}.{readable}.{digest}"


def event_group(name: str) -> str:
    """The Channels group that carries a channel's events to its WebSocket consumers."""
    return _group("agch", name)


def control_group(name: str) -> str:
    """The Channels group that carries client control frames (input, interrupt, cancel)."""
    return _group("agctl", name)
