"""A layer receive always ends when cancelled: a closed socket leaves nothing behind."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from typing import Any

import pytest

from agent_channels.channel import receiving
from agent_channels.channel.receiving import dispatch_many, receive

from .helpers import create_operator
from .wsclient import connect, recv


class SwallowingLayer:
    """A receive that takes its first ``swallow`` cancellations for "no message yet" and
    blocks again, as channels-redis does when a cancellation meets redis-py's read timer."""

    def __init__(self, swallow: int) -> None:
        self.swallow = swallow
        self.swallowed = 0
        self.ended = False

    async def receive(self, channel: str) -> dict[str, Any]:
        try:
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    if self.swallowed >= self.swallow:
                        raise
                    self.swallowed += 1
        finally:
            self.ended = True


class ReadyLayer:
    async def receive(self, channel: str) -> dict[str, Any]:
        return {"type": "x", "channel": channel}


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(receiving, "CANCEL_WAIT_SECONDS", 0.05)


async def test_a_receive_that_ignores_cancellations_is_cancelled_until_it_ends(quick_retries):
    layer = SwallowingLayer(swallow=3)
    waiter = asyncio.ensure_future(receive(layer, "c"))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 5)
    assert layer.ended and layer.swallowed == 3


async def test_a_receive_that_never_ends_is_given_up_after_the_tries(quick_retries, caplog):
    layer = SwallowingLayer(swallow=10**6)
    waiter = asyncio.ensure_future(receive(layer, "c"))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 5)
    assert layer.swallowed == receiving.CANCEL_TRIES
    assert "ignored 8 cancellations" in caplog.text
    layer.swallow = 0  # the event loop's own shutdown cancels it once more: let it end


async def test_a_timeout_gives_none_and_stops_the_receive(quick_retries):
    layer = SwallowingLayer(swallow=1)
    assert await receive(layer, "c", timeout=0.05) is None
    assert layer.ended


async def test_a_message_is_returned():
    assert await receive(ReadyLayer(), "c") == {"type": "x", "channel": "c"}
    assert await receive(ReadyLayer(), "c", timeout=1) == {"type": "x", "channel": "c"}


class Counting:
    """A source giving ``name:0``, ``name:1``, ... and counting what was taken from it."""

    def __init__(self, name: str, limit: int = 10**9) -> None:
        self.name, self.limit, self.taken = name, limit, 0

    async def __call__(self) -> str:
        if self.taken >= self.limit:
            await asyncio.sleep(3600)
        self.taken += 1
        await asyncio.sleep(0)
        return f"{self.name}:{self.taken - 1}"


class Enough(Exception):
    pass


async def test_dispatch_many_dispatches_one_at_a_time_each_source_in_order():
    a, b = Counting("a", 30), Counting("b", 30)
    seen: list[str] = []
    busy = False

    async def dispatch(message: str) -> None:
        nonlocal busy
        assert not busy, "two dispatches overlapped"
        busy = True
        await asyncio.sleep(0.001)
        seen.append(message)
        busy = False
        if len(seen) == 60:
            raise Enough

    with pytest.raises(Enough):
        await asyncio.wait_for(dispatch_many([a, b], dispatch), 10)
    for name in "ab":
        assert [m for m in seen if m.startswith(name)] == [f"{name}:{i}" for i in range(30)]


async def test_dispatch_many_reads_ahead_at_most_two_messages_while_one_is_dispatched():
    source = Counting("s")
    release = asyncio.Event()

    async def dispatch(message: str) -> None:
        await release.wait()

    task = asyncio.ensure_future(dispatch_many([source], dispatch))
    await asyncio.sleep(0.05)
    assert source.taken <= 3  # one dispatched, one in the inbox, one waiting for room
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_dispatch_many_raises_a_sources_error_and_stops_the_others():
    stopped = asyncio.Event()

    async def broken() -> str:
        await asyncio.sleep(0.01)
        raise ConnectionError("the layer went away")

    async def quiet() -> str:
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()
        return ""

    async def dispatch(message: str) -> None:
        raise AssertionError("nothing to dispatch")

    with pytest.raises(ConnectionError, match="went away"):
        await asyncio.wait_for(dispatch_many([quiet, broken], dispatch), 5)
    assert stopped.is_set()


async def test_dispatch_many_cancelled_stops_a_layer_receive_that_ignores_cancellations(
    quick_retries,
):
    layer = SwallowingLayer(swallow=3)

    async def dispatch(message: Any) -> None:
        pass

    task = asyncio.ensure_future(
        dispatch_many([functools.partial(layer.receive, "c"), Counting("ws", 0)], dispatch)
    )
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert layer.ended and layer.swallowed == 3


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_an_event_loop_closing_over_open_sockets_always_finishes():
    """Real channels-redis, the way a server shuts down: sockets still open when their event
    loop closes. The loop cancels every task once; a layer receive that ignored it kept the
    consumer (and the loop's shutdown) waiting for good, in about 1 of 70 loops before."""
    from channels.db import database_sync_to_async
    from django.contrib.auth.models import AnonymousUser

    from agent_channels import publish

    publish("closing", "tick")

    async def refused_and_left_open() -> None:
        ws = await connect("closing", AnonymousUser())
        assert (await recv(ws))["code"] == "unauthenticated"

    async def hello_and_left_open() -> None:
        ws = await connect("closing", await database_sync_to_async(staff_user)())
        assert (await recv(ws))["type"] == "hello"

    for i in range(150):
        scenario = refused_and_left_open if i % 2 else hello_and_left_open
        errors: list[BaseException] = []

        def run(scenario: Any = scenario, errors: list[BaseException] = errors) -> None:
            try:
                asyncio.run(scenario())
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(15)
        assert not thread.is_alive(), f"loop {i} never finished closing"
        assert errors == []


def staff_user() -> Any:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(username="closer-loops").first()
    return user or create_operator(get_user_model(), "closer-loops")


def _layer_receives() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if task.get_coro().__qualname__.endswith("ChannelLayer.receive")  # type: ignore[union-attr]
    ]


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
async def test_closed_sockets_leave_no_layer_receive_behind(django_user_model):
    """Real channels-redis: before, about 1 in 12 closes left its receive task blocking in
    Redis for good (and the consumer waiting on it); every one must now end."""
    from channels.db import database_sync_to_async

    staff = await database_sync_to_async(create_operator)(django_user_model, "closer")
    for i in range(60):
        ws = await connect(f"closing-{i}", staff)
        assert (await recv(ws))["type"] == "hello"
        await ws.disconnect()
    deadline = time.monotonic() + 20
    while _layer_receives() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert _layer_receives() == []
