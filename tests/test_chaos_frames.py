"""A bounded fuzz of a few thousand client frames against a live daphne.

The property tests (tests/test_fuzz_frames.py) prove the parser; this proves the socket
around it: every frame, however broken, gets an answer the protocol names (or none, for a
valid control frame without an id), the connection stays open, and the server logs no
traceback. Frames are generated from a fixed seed (printed), so a failure replays.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import Any

import pytest
import websockets
from django.conf import settings
from django.test import Client

from agent_channels.models import Event

from .procs import Daphne

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.skipif(settings.DB_KIND != "postgres", reason="runs on PostgreSQL (AGCH_DB=postgres)"),
]

CONNECTIONS = 12
FRAMES_PER_CONNECTION = 200  # 2,400 frames in all
#: Under the server's CLIENT_BURST (20) and CLIENT_RATE (10/s): the fuzz reaches the parser.
BURST, PACE_SECONDS = 18, 0.11
CODES = {"binary_not_supported", "too_large", "invalid_json", "invalid_frame", "unknown_type",
         "rate_limited"}
ODD = ["\x00", "\ud800", "\udfff", "\u2028", "\ufeff", "é", "𝄞", '"', "\\", "\n", "NaN"]


def odd_text(rng: random.Random, size: int = 12) -> str:
    return "".join(rng.choice(ODD) if rng.random() < 0.3 else chr(rng.randint(32, 0x2FFF))
                   for _ in range(rng.randint(0, size)))


def value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 9 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, 0, -1, 2**53 + 1, 2**64, 1e308, -0.0])
    if kind == 2:
        return rng.choice([float("nan"), float("inf"), 1.5])
    if kind in (3, 4, 5):
        return odd_text(rng)
    if kind in (6, 7):
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {odd_text(rng, 5): value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def frame(rng: random.Random) -> str | bytes:
    roll = rng.random()
    if roll < 0.05:
        return rng.randbytes(rng.randint(0, 64))
    if roll < 0.10:
        return odd_text(rng, 60).replace("\ud800", "").replace("\udfff", "")
    if roll < 0.13:
        depth = rng.choice([31, 33, 200, 5000])
        return '{"type": "input", "data": ' + "[" * depth + "]" * depth + "}"
    if roll < 0.15:
        return json.dumps({"type": "input", "data": "x" * rng.choice([60_000, 70_000, 300_000])})
    obj: dict[str, Any] = {}
    if rng.random() < 0.95:
        obj["type"] = rng.choice(["input", "interrupt", "cancel", "ping", "ping", "event", "",
                                  odd_text(rng, 4)]) if rng.random() < 0.9 else value(rng)
    if rng.random() < 0.7:
        obj["id"] = rng.choice([rng.randint(0, 10**6), f"f{rng.randint(0, 999)}", "x" * 101,
                                value(rng)])
    if rng.random() < 0.7:
        obj["data"] = value(rng)
    if rng.random() < 0.05:
        obj[odd_text(rng, 4)] = 1
    text = json.dumps(obj, allow_nan=True, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.08:
        text = text[: rng.randint(0, len(text))]
    # A WebSocket text frame is UTF-8: unpaired surrogates can only travel as \u escapes.
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


@pytest.fixture
def cookie(django_user_model) -> str:
    client = Client()
    client.force_login(django_user_model.objects.create_user("fuzzer", is_staff=True, is_superuser=True))
    return f"sessionid={client.cookies['sessionid'].value}"


async def fuzz_connection(server: Daphne, cookie: str, index: int, seed: int,
                          stats: dict[str, int]) -> None:
    rng = random.Random(seed * 1000 + index)
    async with websockets.connect(
        server.ws_url(f"fuzz-{index}"),
        additional_headers={"Cookie": cookie, "Origin": f"http://127.0.0.1:{server.port}"},
        max_size=2**22, open_timeout=15,
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        replies: list[dict[str, Any]] = []

        async def reader() -> None:
            async for raw in ws:
                replies.append(json.loads(raw))

        task = asyncio.create_task(reader())
        for i in range(FRAMES_PER_CONNECTION):
            await ws.send(frame(rng))
            stats["frames"] += 1
            if i >= BURST:
                await asyncio.sleep(PACE_SECONDS)
        # Replies come in order: once the final ping's pong is here, every frame was handled.
        await ws.send(json.dumps({"type": "ping", "id": "last"}))
        async with asyncio.timeout(60):
            while not any(r.get("type") == "pong" and r.get("id") == "last" for r in replies):
                assert not task.done(), f"connection {index} closed: {ws.close_code} {ws.close_reason}"
                await asyncio.sleep(0.05)
        task.cancel()
    for reply in replies:
        kind = reply["type"]
        stats[kind] = stats.get(kind, 0) + 1
        assert kind in {"error", "pong", "ack", "event"}, reply
        if kind == "error":
            assert reply["code"] in CODES and reply["message"], reply
            stats[reply["code"]] = stats.get(reply["code"], 0) + 1


def test_thousands_of_random_frames_never_kill_a_connection(cookie: str) -> None:
    seed = int(os.environ.get("AGCH_FUZZ_SEED", time.time_ns() % 10**6))
    server = Daphne()
    stats: dict[str, int] = {"frames": 0}
    try:
        async def main() -> None:
            await asyncio.gather(*(fuzz_connection(server, cookie, i, seed, stats)
                                   for i in range(CONNECTIONS)))
        asyncio.run(main())
        log = server.log_text()
    finally:
        server.stop()
    print(f"\nframe fuzz (AGCH_FUZZ_SEED={seed}): {stats}")
    assert stats["frames"] == CONNECTIONS * FRAMES_PER_CONNECTION
    assert "Traceback" not in log, log[-3000:]
    assert stats.get("rate_limited", 0) < stats["frames"] // 20, "the fuzz mostly hit the rate limit"
    # The accepted control frames are in the log, one row each.
    assert Event.objects.filter(channel__name__startswith="fuzz-").count() >= stats.get("ack", 0) > 0
