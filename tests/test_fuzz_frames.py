"""Property tests for client frames: whatever a client sends, the parser answers with a
frame or a coded :class:`FrameError`, and what it accepts can be stored and sent back."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent_channels.ws.frames import (
    MAX_DEPTH,
    MAX_ID_LENGTH,
    ClientFrame,
    FrameError,
    parse_client_frame,
)

#: Every code the parser may answer with (docs/protocol.rst lists them for clients).
CODES = {"binary_not_supported", "too_large", "invalid_json", "invalid_frame", "unknown_type"}
LIMIT = 4096

# Modest example counts keep the default run fast; the strategies aim at the edges instead.
FUZZ = settings(
    max_examples=150, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

#: Any code point, including lone surrogates and NUL (they arrive as JSON escapes).
any_char = st.characters(exclude_categories=())
any_text = st.text(any_char, max_size=40)
odd_floats = st.floats(allow_nan=True, allow_infinity=True)
big_ints = st.integers(min_value=-(2**70), max_value=2**70)
json_values = st.recursive(
    st.none() | st.booleans() | big_ints | odd_floats | any_text,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(any_text, children, max_size=4),
    max_leaves=20,
)
frame_types = st.sampled_from(["input", "interrupt", "cancel", "ping", "", "event", "INPUT"]) | any_text
frame_ids = st.none() | st.booleans() | big_ints | odd_floats | any_text | st.text(min_size=95, max_size=110)


@st.composite
def frame_objects(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed frames, with a field wrong or extra now and then."""
    frame: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        frame["type"] = draw(frame_types)
    if draw(st.booleans()):
        frame["id"] = draw(frame_ids)
    if draw(st.integers(0, 3)):
        frame["data"] = draw(json_values)
    if not draw(st.integers(0, 5)):
        frame[draw(any_text)] = draw(json_values)
    return frame


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def check(text: str | None, bytes_data: bytes | None = None, limit: int = LIMIT) -> ClientFrame | None:
    """Parse and check the contract: a valid frame, or a FrameError with a known code."""
    try:
        frame = parse_client_frame(text, bytes_data, limit)
    except FrameError as exc:
        assert exc.code in CODES, exc.code
        assert exc.message and isinstance(exc.message, str)
        out = exc.to_frame("x")
        assert out == {"type": "error", "code": exc.code, "message": exc.message, "id": "x"}
        return None
    assert isinstance(frame, ClientFrame)
    assert frame.type in {"input", "interrupt", "cancel", "ping"}
    assert frame.id is None or (
        isinstance(frame.id, str) and len(frame.id) <= MAX_ID_LENGTH
    ) or (isinstance(frame.id, int) and not isinstance(frame.id, bool))
    # What the parser lets through must be storable (jsonb, SQLite JSON) and sendable back
    # to a browser: strict JSON, valid UTF-8, no NUL.
    dumped = json.dumps({"id": frame.id, "data": frame.data}, allow_nan=False)
    assert "\\u0000" not in dumped
    dumped.encode("utf-8")
    json.dumps(frame.data, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return frame


@FUZZ
@given(st.text(any_char, max_size=300) | st.none(), st.none() | st.binary(max_size=50))
@example("1e400", None)
@example('{"type": "input", "data": 1e400}', None)
@example('{"type": "input", "data": NaN}', None)
@example('{"type": "input", "data": "\\u0000"}', None)
@example('{"type": "input", "data": "\\udc80"}', None)
@example('{"type": "ping", "id": "\\ud800"}', None)
@example('{"type": "input", "data": ' + nested(MAX_DEPTH + 5) + "}", None)
@example(nested(100_000), None)
@example("", b"\xff")
def test_any_text_is_a_frame_or_a_coded_error(text: str | None, bytes_data: bytes | None) -> None:
    check(text, bytes_data)


@FUZZ
@given(frame_objects(), st.booleans())
def test_json_frames_with_odd_fields(obj: dict[str, Any], ascii_only: bool) -> None:
    # allow_nan: NaN/Infinity tokens are what a careless client library would send.
    text = json.dumps(obj, allow_nan=True, ensure_ascii=ascii_only)
    frame = check(text)
    if frame is not None:
        # Accepted frames lose nothing: what comes out is what went in.
        assert frame.type == obj["type"]
        assert frame.id == obj.get("id")
        assert json.dumps(frame.data) == json.dumps(obj.get("data"))


@FUZZ
@given(frame_objects(), st.integers(0, 400), st.integers(1, 300))
def test_cut_and_oversized_frames(obj: dict[str, Any], cut: int, limit: int) -> None:
    text = json.dumps(obj, allow_nan=True)
    check(text[:cut], limit=limit)
    if len(text.encode("utf-8", "surrogatepass")) > limit:
        try:
            parse_client_frame(text, None, limit)
        except FrameError as exc:
            assert exc.code == "too_large"
        else:
            raise AssertionError("a frame over the limit was accepted")


@FUZZ
@given(st.integers(1, MAX_DEPTH + 3), json_values)
def test_nesting_limit_is_exact(depth: int, leaf: Any) -> None:
    data: Any = leaf if not isinstance(leaf, list | dict) else 0
    for i in range(depth - 1):
        data = [data] if i % 2 else {"k": data}
    text = json.dumps({"type": "input", "data": data}, allow_nan=True)
    frame = check(text, limit=10**6)
    clean = not isinstance(leaf, float) or (leaf == leaf and abs(leaf) != float("inf"))
    clean = clean and not (isinstance(leaf, str) and ("\x00" in leaf or _has_surrogate(leaf)))
    if clean:
        assert (frame is not None) == (depth <= MAX_DEPTH)


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)
