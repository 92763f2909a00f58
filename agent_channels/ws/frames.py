"""Client frames: parsing and validation, separate from the consumer so it can be fuzzed.

Every rejection is a :class:`FrameError` whose ``code`` and message go back to the
client as ``{"type": "error", "code": ..., "message": ...}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["CONTROL_TYPES", "ClientFrame", "FrameError", "parse_client_frame"]

#: Frame types that are persisted and handed to the runtime.
CONTROL_TYPES = frozenset({"input", "interrupt", "cancel"})
_ALLOWED_KEYS = {
    "input": {"type", "id", "data"},
    "interrupt": {"type", "id", "data"},
    "cancel": {"type", "id", "data"},
    "ping": {"type", "id"},
}
MAX_ID_LENGTH = 100
MAX_DEPTH = 32


class FrameError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_frame(self, frame_id: Any = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if frame_id is not None:
            frame["id"] = frame_id
        return frame


@dataclass(frozen=True)
class ClientFrame:
    type: str
    id: str | int | None
    data: Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_data(value: Any, limit: int) -> None:
    """Raise FrameError if ``value`` nests deeper than ``limit`` or holds what no store keeps.

    NaN, infinities (``1e400`` parses as one), NUL characters and unpaired surrogates
    are rejected here: PostgreSQL's jsonb refuses all of them, SQLite's JSON check
    refuses the first two, and browsers cannot parse NaN back. Rejecting them for every
    backend keeps the protocol the same everywhere.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise FrameError("invalid_frame", f"'data' may nest at most {limit} levels.")
        if isinstance(item, dict):
            for key, child in item.items():
                _check_string(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _check_string(item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise FrameError("invalid_frame", "Numbers must be finite.")


def _check_string(text: str) -> None:
    if "\x00" in text:
        raise FrameError("invalid_frame", "Strings may not contain NUL characters.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FrameError("invalid_frame", "Strings may not contain unpaired surrogates.") from None


def parse_client_frame(text: str | None, bytes_data: bytes | None, max_bytes: int) -> ClientFrame:
    """Parse one WebSocket message from a client or raise :class:`FrameError`."""
    if text is None:
        raise FrameError("binary_not_supported", "Send frames as JSON text, not binary.")
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise FrameError("too_large", f"A frame may be at most {max_bytes} bytes.")
    try:
        frame = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise FrameError("invalid_json", "The frame is not valid JSON.") from None
    if not isinstance(frame, dict):
        raise FrameError("invalid_frame", "A frame must be a JSON object.")
    frame_id = frame.get("id")
    if frame_id is not None and not (
        (isinstance(frame_id, str) and len(frame_id) <= MAX_ID_LENGTH)
        or (isinstance(frame_id, int) and not isinstance(frame_id, bool) and abs(frame_id) < 2**53)
    ):
        raise FrameError(
            "invalid_frame",
            f"'id' must be a string of at most {MAX_ID_LENGTH} characters or an integer.",
        )
    if isinstance(frame_id, str):
        _check_string(frame_id)
    frame_type = frame.get("type")
    if not isinstance(frame_type, str):
        raise FrameError("invalid_frame", "A frame needs a string 'type'.")
    allowed = _ALLOWED_KEYS.get(frame_type)
    if allowed is None:
        raise FrameError(
            "unknown_type",
            f"Unknown frame type {frame_type[:40]!r}; expected one of input, interrupt, cancel, ping.",
        )
    extra = set(frame) - allowed
    if extra:
        raise FrameError("invalid_frame", f"Unexpected keys: {', '.join(sorted(extra)[:5])}.")
    if frame_type == "input" and "data" not in frame:
        raise FrameError("invalid_frame", "An input frame needs 'data'.")
    data = frame.get("data")
    _check_data(data, MAX_DEPTH)
    return ClientFrame(type=frame_type, id=frame_id, data=data)
