"""Quiet sockets ask the log for their channels' heads together: one query per tick."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.db import OperationalError

from agent_channels import publish
from agent_channels.channel.log import EventDraft, append, append_many
from agent_channels.models import Channel
from agent_channels.ws import heads
from agent_channels.ws.heads import HeadChecks, head_checks

from .helpers import create_operator
from .wsclient import connect, recv, recv_events

pytestmark = pytest.mark.django_db(transaction=True)

apublish = sync_to_async(publish)


async def test_checks_asked_within_a_tick_share_one_query():
    for name, count in (("a", 1), ("b", 3)):
        for _ in range(count):
            await apublish(name, "tick")
    checks = HeadChecks()
    answers = await asyncio.gather(
        checks.head("a"), checks.head("b"), checks.head("b"), checks.head("nowhere")
    )
    assert [answer[1:] for answer in answers] == [(1, 0), (3, 0), (3, 0), (0, 0)]
    assert answers[0][0] is not None and answers[3][0] is None
    assert checks.queries == 1


async def test_a_check_asked_during_a_query_gets_the_next_one(monkeypatch):
    await apublish("late", "tick")
    reading = asyncio.Event()
    release = asyncio.Event()
    real = heads.read_heads
    loop = asyncio.get_running_loop()

    def slow_read(names):
        loop.call_soon_threadsafe(reading.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return real(names)

    monkeypatch.setattr(heads, "read_heads", slow_read)
    checks = HeadChecks()
    first = asyncio.ensure_future(checks.head("late"))
    await asyncio.wait_for(reading.wait(), 5)
    second = asyncio.ensure_future(checks.head("late"))
    await asyncio.sleep(heads.TICK_SECONDS * 2)
    assert not second.done()
    release.set()
    assert (await asyncio.wait_for(first, 5))[1] == 1
    assert (await asyncio.wait_for(second, 5))[1] == 1
    assert checks.queries == 2


async def test_a_failed_query_fails_every_check_waiting_for_it_and_the_next_works(monkeypatch):
    await apublish("flaky", "tick")
    real = heads.read_heads
    calls = []

    def failing_once(names):
        calls.append(names)
        if len(calls) == 1:
            raise OperationalError("the database went away")
        return real(names)

    monkeypatch.setattr(heads, "read_heads", failing_once)
    checks = HeadChecks()
    results = await asyncio.gather(checks.head("flaky"), checks.head("flaky"),
                                   return_exceptions=True)
    assert all(isinstance(result, OperationalError) for result in results)
    assert (await checks.head("flaky"))[1] == 1


async def test_a_cancelled_check_leaves_the_others_answered():
    await apublish("cancel", "tick")
    checks = HeadChecks()
    gone = asyncio.ensure_future(checks.head("cancel"))
    kept = asyncio.ensure_future(checks.head("cancel"))
    await asyncio.sleep(0)
    gone.cancel()
    assert (await asyncio.wait_for(kept, 5))[1] == 1
    assert gone.cancelled()


async def test_checks_left_waiting_when_the_answering_task_is_cancelled_are_cancelled_too():
    checks = HeadChecks()
    waiting = asyncio.ensure_future(checks.head("any"))
    await asyncio.sleep(0)
    checks._answering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 5)


async def test_many_quiet_sockets_fetch_their_dropped_tails_with_shared_queries(settings,
                                                                              django_user_model):
    settings.AGENT_CHANNELS = {"HEAD_CHECK_MS": 400}
    staff = await sync_to_async(create_operator)(django_user_model, "staff")
    names = [f"quiet-{i}" for i in range(12)]
    for name in names:
        await sync_to_async(Channel.objects.create)(name=name)
    sockets = []
    for name in names:
        ws = await connect(name, staff)
        await recv(ws)
        sockets.append(ws)
    before = head_checks().queries

    def burst_then_lost_tails() -> None:
        # One commit wakes every socket at once; then each channel's last events never
        # reach the layer, and nothing follows them.
        append_many([(name, [EventDraft("tick", {"i": 0})]) for name in names])
        for name in names:
            append(name, [EventDraft("tick", {"i": i}) for i in (1, 2)], notify=False)

    await sync_to_async(burst_then_lost_tails)()
    for ws in sockets:
        assert [f["seq"] for f in await recv_events(ws, 3, timeout=5)] == [1, 2, 3]
    asked = head_checks().queries - before
    assert 1 <= asked < len(names)
    for ws in sockets:
        await ws.disconnect()


async def test_head_checks_hold_nothing_of_their_loop_once_answered():
    # _by_loop is keyed weakly by the loop: a value that kept the loop (a finished task, a
    # future) would keep every closed loop of a test run alive.
    await apublish("gone", "tick")
    checks = HeadChecks()
    assert (await checks.head("gone"))[1] == 1
    await asyncio.sleep(0)  # the answering task's done callback
    assert checks._answering is None and not checks._asked and not checks._in_query
