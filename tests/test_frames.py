"""Client frames: every rejection has a code, and nothing else ever escapes the parser."""

import json
import random

import pytest

from agent_channels.ws.frames import (
    MAX_DEPTH,
    MAX_ID_LENGTH,
    ClientFrame,
    FrameError,
    parse_client_frame,
)

LIMIT = 1024


def parse(text, bytes_data=None, max_bytes=LIMIT):
    return parse_client_frame(text, bytes_data, max_bytes)


def code_of(text, bytes_data=None, max_bytes=LIMIT):
    with pytest.raises(FrameError) as info:
        parse(text, bytes_data, max_bytes)
    return info.value.code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type": "ping"}', ClientFrame("ping", None, None)),
        ('{"type": "ping", "id": "p1"}', ClientFrame("ping", "p1", None)),
        ('{"type": "input", "data": {"text": "hi"}}', ClientFrame("input", None, {"text": "hi"})),
        ('{"type": "input", "id": 7, "data": null}', ClientFrame("input", 7, None)),
        ('{"type": "interrupt"}', ClientFrame("interrupt", None, None)),
        ('{"type": "cancel", "id": -3, "data": {"reason": "user"}}',
         ClientFrame("cancel", -3, {"reason": "user"})),
        ('{"type": "input", "data": "ünïcödé ✓ 🙂"}', ClientFrame("input", None, "ünïcödé ✓ 🙂")),
        ('{"type": "input", "data": "\\ud83d\\ude42"}', ClientFrame("input", None, "🙂")),
    ],
)
def test_good_frames_parse(text, expected):
    assert parse(text) == expected


def test_binary_frames_are_refused():
    assert code_of(None, b'{"type": "ping"}') == "binary_not_supported"


def test_too_large_counts_bytes_not_characters():
    ascii_frame = json.dumps({"type": "input", "data": "x" * (LIMIT - 40)})
    assert len(ascii_frame.encode()) <= LIMIT
    assert parse(ascii_frame).type == "input"
    assert code_of('{"type": "input", "data": "' + "x" * LIMIT + '"}') == "too_large"
    # Under the limit in characters, over it in UTF-8 bytes (three bytes per character).
    multibyte = '{"type": "input", "data": "' + "€" * (LIMIT // 2) + '"}'
    assert len(multibyte) < LIMIT < len(multibyte.encode())
    assert code_of(multibyte) == "too_large"


def test_too_large_error_names_the_limit():
    with pytest.raises(FrameError) as info:
        parse("x" * 11, max_bytes=10)
    assert info.value.to_frame() == {
        "type": "error", "code": "too_large", "message": "A frame may be at most 10 bytes."
    }
    assert info.value.to_frame("f1")["id"] == "f1"


@pytest.mark.parametrize(
    "text",
    ["", "{", "not json", "{'type': 'ping'}", '{"type": "ping",}', '{"type": "input", "data": NaN}',
     '{"type": "input", "data": [Infinity]}', '{"type": "input", "data": -Infinity}',
     "[" * 5000 + "]" * 5000, '{"type": "input", "data": ' + "1" * 5000 + "}"],
)
def test_invalid_json(text):
    assert code_of(text, max_bytes=20_000) == "invalid_json"


@pytest.mark.parametrize("text", ["[]", '"ping"', "1", "null", "true", '[{"type": "ping"}]'])
def test_non_objects(text):
    assert code_of(text) == "invalid_frame"


@pytest.mark.parametrize(
    "text",
    ['{"type": "subscribe"}', '{"type": "PING"}', '{"type": ""}', '{"type": "hello"}',
     '{"type": "' + "x" * 500 + '"}'],
)
def test_unknown_types(text):
    assert code_of(text) == "unknown_type"


def test_unknown_type_message_is_bounded():
    with pytest.raises(FrameError) as info:
        parse('{"type": "' + "x" * 500 + '"}')
    assert len(info.value.message) < 200


@pytest.mark.parametrize("text", ["{}", '{"type": 1}', '{"type": null}', '{"type": ["ping"]}'])
def test_missing_or_non_string_type(text):
    assert code_of(text) == "invalid_frame"


@pytest.mark.parametrize(
    "frame_id",
    [True, False, 1.5, 1.0, 2**53, -(2**53), 10**30, "x" * (MAX_ID_LENGTH + 1), [], {}, "a\x00b"],
)
def test_bad_ids(frame_id):
    assert code_of(json.dumps({"type": "ping", "id": frame_id})) == "invalid_frame"


@pytest.mark.parametrize("frame_id", [0, 2**53 - 1, -(2**53 - 1), "", "x" * MAX_ID_LENGTH, None])
def test_good_ids(frame_id):
    assert parse(json.dumps({"type": "ping", "id": frame_id})).id == frame_id


@pytest.mark.parametrize(
    "frame",
    [{"type": "ping", "data": 1}, {"type": "input", "data": 1, "channel": "other"},
     {"type": "cancel", "seq": 3}, {"type": "interrupt", "user": 1}],
)
def test_extra_keys(frame):
    assert code_of(json.dumps(frame)) == "invalid_frame"


def test_input_needs_data():
    assert code_of('{"type": "input"}') == "invalid_frame"
    assert code_of('{"type": "input", "id": "x"}') == "invalid_frame"


def nested(depth):
    value = "leaf"
    for level in range(depth - 1):
        value = {"k": value} if level % 2 else [value]
    return value


def test_nesting_limit():
    assert parse(json.dumps({"type": "input", "data": nested(MAX_DEPTH)})).type == "input"
    assert code_of(json.dumps({"type": "input", "data": nested(MAX_DEPTH + 1)})) == "invalid_frame"
    deep_dicts = "{}"
    for _ in range(MAX_DEPTH):
        deep_dicts = '{"a": ' + deep_dicts + "}"
    assert code_of('{"type": "input", "data": ' + deep_dicts + "}") == "invalid_frame"


@pytest.mark.parametrize(
    "data",
    ['"a\\u0000b"', '{"k\\u0000": 1}', '"\\ud800"', '["\\udfff"]', '{"\\udc00": 1}', "1e400",
     "[-1e999]"],
)
def test_values_no_backend_can_store_are_refused(data):
    # PostgreSQL's jsonb refuses NUL, unpaired surrogates and non-finite numbers; SQLite's
    # JSON check refuses the numbers: the protocol refuses all of them on every backend.
    assert code_of('{"type": "input", "data": ' + data + "}") == "invalid_frame"


SEEDS = [
    '{"type": "input", "id": "abc", "data": {"text": "hello", "n": [1, 2.5, null, true]}}',
    '{"type": "ping", "id": 42}',
    '{"type": "cancel"}',
    '{"type": "interrupt", "data": {"reason": "stop"}}',
]
ALPHABET = '{}[]",:0123456789.-+eE \\/untrlsfaxyp\x00\ud800é€🙂\n\t'


def mutate(rng, text):
    chars = list(text)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(4)
        pos = rng.randrange(len(chars) + 1)
        if op == 0 or not chars:
            chars.insert(pos, rng.choice(ALPHABET))
        elif op == 1:
            del chars[min(pos, len(chars) - 1)]
        elif op == 2:
            chars[min(pos, len(chars) - 1)] = rng.choice(ALPHABET)
        else:
            start = rng.randrange(len(chars))
            chars[pos:pos] = chars[start:start + rng.randint(1, 20)]
    return "".join(chars)


def garbage(rng):
    kind = rng.randrange(3)
    if kind == 0:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 80)))
    if kind == 1:
        depth = rng.randint(1, 80)
        return '{"type": "input", "data": ' + "[" * depth + "0" + "]" * depth + "}"
    return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(0, 30)))


def test_fuzz_only_frames_or_frame_errors_come_out():
    rng = random.Random(20240611)
    parsed = 0
    for i in range(2000):
        text = mutate(rng, rng.choice(SEEDS)) if i % 3 else garbage(rng)
        try:
            frame = parse(text, max_bytes=rng.choice([64, 1024]))
        except FrameError as exc:
            assert exc.code in {"too_large", "invalid_json", "invalid_frame", "unknown_type"}
            json.dumps(exc.to_frame())  # always sendable
            continue
        parsed += 1
        assert isinstance(frame, ClientFrame)
        assert frame.type in {"input", "interrupt", "cancel", "ping"}
        # Whatever is accepted can be stored and sent back as strict JSON.
        json.dumps(frame.data, allow_nan=False).encode("utf-8")
    assert parsed > 0


def test_every_error_code_is_documented():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    def read(package):
        return "".join(path.read_text(encoding="utf-8")
                       for path in sorted((root / "agent_channels" / package).glob("*.py")))

    ws, views = read("ws"), read("views")
    codes = set(re.findall(r'(?:FrameError|_reply_error)\(\s*"([a-z_]+)"', ws))
    codes |= set(re.findall(r'close_codes\.[A-Z_]+,\s*"([a-z_]+)"', ws))
    codes |= set(re.findall(r'error\(\s*\d{3},\s*"([a-z_]+)"', views))
    assert {"origin_not_allowed", "history_pruned", "rate_limited", "invalid_parameter"} <= codes
    docs = "".join((root / "docs" / name).read_text(encoding="utf-8")
                   for name in ("protocol.rst", "runtime.rst"))
    assert not sorted(code for code in codes if f"``{code}``" not in docs)
