"""Events too large for a follower's connection travel as a placeholder that points to them.

A WebSocket message over a client's limit (1 MiB in Python's ``websockets`` and many
proxies; daphne refuses larger incoming ones too) makes the client close the socket and
resume at the same seq, for ever. So an event whose frame is longer than
``MAX_SENT_FRAME_BYTES`` goes out over WebSocket and SSE as::

    {"type": "event", "seq": 42, "event": "message.completed", "run": "...", "ts": "...",
     "too_large": true, "bytes": 1500123, "url": "/agent-channels/<channel>/events/?since=41&limit=1"}

and the client reads it from the HTTP events endpoint (the packaged JS client does).
The seq stays in order: the follower never wedges, and nothing is lost.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from django.urls import NoReverseMatch, reverse

__all__ = ["fit_frame", "placeholder"]


def _too_long(text: str, limit: int) -> bool:
    # Characters are a lower bound of UTF-8 bytes, four times them an upper bound.
    if len(text) > limit:
        return True
    return len(text) * 4 > limit and len(text.encode("utf-8")) > limit


def events_url(channel: str, seq: int) -> str | None:
    """The HTTP events endpoint's page holding exactly event ``seq`` (None without URLs)."""
    try:
        base = reverse("agent_channels:events", kwargs={"channel": channel})
    except NoReverseMatch:
        return None
    return f"{base}?{urlencode({'since': seq - 1, 'limit': 1})}"


def placeholder(channel: str, frame: dict[str, Any], size: int) -> dict[str, Any]:
    """The frame that stands for ``frame`` (an event frame of ``size`` bytes)."""
    seq = int(frame["seq"])
    return {
        "type": "event",
        "seq": seq,
        "event": frame.get("event"),
        "run": frame.get("run"),
        "ts": frame.get("ts"),
        "too_large": True,
        "bytes": size,
        "url": events_url(channel, seq),
    }


def fit_frame(channel: str, text: str, limit: int) -> str:
    """``text`` (an event frame as JSON), or its placeholder when it is over ``limit``."""
    if not limit or not _too_long(text, limit):
        return text
    frame = json.loads(text)
    stub = placeholder(channel, frame, len(text.encode("utf-8")))
    return json.dumps(stub, separators=(",", ":"))
