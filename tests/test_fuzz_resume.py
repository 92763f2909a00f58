"""Property test for seq/resume: random interleavings of publishing, connecting at any
position, reading a little, dropping and resuming. Every client session must receive each
event after its ``since`` exactly once, in order, up to the head; a client resuming from the
last seq it saw therefore ends with the whole log, no gap and no duplicate.

The consumer runs in-process (channels' WebsocketCommunicator) on the pass's real channel
layer; the publisher is a concurrent task, so replay, the switch to live and new events race.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent_channels import publish
from agent_channels.channel.log import EventDraft, append
from agent_channels.models import Channel

from .wsclient import connect, recv

pytestmark = pytest.mark.django_db(transaction=True)

FUZZ = settings(
    max_examples=25, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLIENTS = 3
_channels = itertools.count()

ops = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 6)),
        st.tuples(st.just("append"), st.integers(1, 40)),
        st.tuples(st.just("connect"), st.integers(0, CLIENTS - 1),
                  st.sampled_from(["resume", "resume", "none", "at"]), st.floats(0, 1)),
        st.tuples(st.just("read"), st.integers(0, CLIENTS - 1), st.integers(1, 30)),
        st.tuples(st.just("drop"), st.integers(0, CLIENTS - 1)),
        st.tuples(st.just("pause"), st.floats(0, 0.03)),
    ),
    min_size=1, max_size=25,
)


@dataclass
class Session:
    since: int
    seqs: list[int] = field(default_factory=list)


@dataclass
class Client:
    ws: WebsocketCommunicator | None = None
    sessions: list[Session] = field(default_factory=list)

    @property
    def last_seen(self) -> int:
        for session in reversed(self.sessions):
            if session.seqs:
                return session.seqs[-1]
            return session.since
        return 0


class Scenario:
    def __init__(self, channel: str, user: Any) -> None:
        self.channel, self.user = channel, user
        self.clients = [Client() for _ in range(CLIENTS)]
        self.pending: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.committed = 0  # events whose publish has returned: a safe lower bound of the head

    async def publisher(self) -> None:
        while True:
            kind, count = await self.pending.get()
            if kind == "publish":
                for _ in range(count):
                    await database_sync_to_async(publish)(self.channel, "tick", {"n": self.committed})
                    self.committed += 1
            else:
                drafts = [EventDraft("tick", {"n": self.committed + i}) for i in range(count)]
                await database_sync_to_async(append)(self.channel, drafts)
                self.committed += count
            self.pending.task_done()

    async def receive_available(self, client: Client, limit: int) -> None:
        assert client.ws is not None
        for _ in range(limit):
            # receive_nothing never cancels the consumer; receive_from would on a timeout.
            if await client.ws.receive_nothing(0.01, 0.005):
                return
            self.take(client, await recv(client.ws))

    def take(self, client: Client, frame: dict[str, Any]) -> None:
        assert frame["type"] == "event", frame
        client.sessions[-1].seqs.append(frame["seq"])

    async def open(self, client: Client, mode: str, where: float) -> None:
        if client.ws is not None:
            await self.drop(client)
        since = {"resume": client.last_seen, "none": None, "at": int(where * self.committed)}[mode]
        client.ws = await connect(self.channel, self.user, since=since)
        hello = await recv(client.ws)
        assert hello["type"] == "hello", hello
        assert hello["since"] == (since or 0) and hello["last_seq"] >= hello["since"]
        client.sessions.append(Session(hello["since"]))

    async def drop(self, client: Client) -> None:
        assert client.ws is not None
        await client.ws.disconnect()
        client.ws = None

    async def run(self, steps: list[tuple[Any, ...]]) -> None:
        publisher = asyncio.create_task(self.publisher())
        try:
            for step in steps:
                kind = step[0]
                if kind in ("publish", "append"):
                    self.pending.put_nowait((kind, step[1]))
                elif kind == "connect":
                    await self.open(self.clients[step[1]], step[2], step[3])
                elif kind == "read" and self.clients[step[1]].ws is not None:
                    await self.receive_available(self.clients[step[1]], step[2])
                elif kind == "drop" and self.clients[step[1]].ws is not None:
                    await self.drop(self.clients[step[1]])
                elif kind == "pause":
                    await asyncio.sleep(step[1])
            await asyncio.wait_for(self.pending.join(), 60)
            head = await database_sync_to_async(
                lambda: Channel.objects.filter(name=self.channel).values_list("last_seq", flat=True).first()
            )() or 0
            assert head == self.committed
            # Every client catches up: the open ones by reading on, the others by resuming.
            for client in self.clients:
                if client.ws is None:
                    await self.open(client, "resume", 0)
                assert client.ws is not None
                async with asyncio.timeout(30):
                    while client.last_seen < head:
                        self.take(client, json.loads(await client.ws.receive_from(10)))
                assert await client.ws.receive_nothing(0.05), "more events than the log holds"
                await self.drop(client)
        finally:
            publisher.cancel()
            for client in self.clients:
                if client.ws is not None:
                    await client.ws.disconnect()
        self.check(head)

    def check(self, head: int) -> None:
        sessions = 0
        for client in self.clients:
            for session in client.sessions:
                sessions += 1
                expected = list(range(session.since + 1, session.since + 1 + len(session.seqs)))
                assert session.seqs == expected, (session.since, session.seqs)
            assert client.last_seen == head
        event(f"sessions per example: {min(sessions, 10)}{'+' if sessions >= 10 else ''}")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("resumer", is_staff=True, is_superuser=True)


@FUZZ
@given(steps=ops)
def test_any_interleaving_of_publish_and_resume_delivers_each_event_once_in_order(
    staff: Any, steps: list[tuple[Any, ...]]
) -> None:
    # A fresh channel per example: seqs start at 1 and nothing is left over from the last one.
    channel = f"resume-{next(_channels)}"
    asyncio.run(Scenario(channel, staff).run(steps))
