"""A round of live sends on channels-redis's PUB/SUB layer goes out as one pipeline per
shard, and consumers receive exactly what ``group_send`` would have delivered."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer
from django.conf import settings

from agent_channels.channel.pipelining import pipelined_sender
from agent_channels.channel.wire import LiveWire

pytestmark = pytest.mark.redis


def pubsub_layer(hosts: list[Any]) -> Any:
    from channels_redis.pubsub import RedisPubSubChannelLayer

    # PUB/SUB channels are server-wide: a prefix of its own keeps parallel runs apart.
    return RedisPubSubChannelLayer(hosts=hosts, prefix=PREFIX)


PREFIX = f"agch-pipelining-{uuid.uuid4().hex[:8]}"


def test_only_the_pubsub_layer_is_pipelined():
    from channels_redis.core import RedisChannelLayer
    from channels_redis.pubsub import RedisPubSubChannelLayer

    class OwnSends(RedisPubSubChannelLayer):
        async def group_send(self, group: str, message: dict) -> None: ...

    assert pipelined_sender(pubsub_layer([settings.REDIS_URL])) is not None
    assert pipelined_sender(OwnSends(hosts=[settings.REDIS_URL])) is None
    assert pipelined_sender(RedisChannelLayer(hosts=[settings.REDIS_URL])) is None
    assert pipelined_sender(InMemoryChannelLayer()) is None
    assert pipelined_sender(None) is None


@pytest.mark.parametrize("shards", [1, 2])
def test_a_round_reaches_every_subscriber_in_order_in_one_pipeline_per_shard(monkeypatch, shards):
    """Real Redis: 40 groups (spread over two "shards" - two databases of one server - in
    the second case), three announcements each in one round, subscribers on the same layer
    as a consumer would be."""
    from redis.asyncio.client import Pipeline

    base = settings.REDIS_URL.rsplit("/", 1)[0]
    hosts = [f"{base}/{12 + i}" for i in range(shards)]
    sender_layer, receiver_layer = pubsub_layer(hosts), pubsub_layer(hosts)
    groups = [f"pipelined-{i}" for i in range(40)]
    executed: list[int] = []
    real_execute = Pipeline.execute

    async def counting_execute(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
        executed.append(len(self.command_stack))
        return await real_execute(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "execute", counting_execute)

    async def main() -> dict[str, list[int]]:
        send = pipelined_sender(sender_layer)
        assert send is not None
        channel = await receiver_layer.new_channel()
        for group in groups:
            await receiver_layer.group_add(group, channel)
        items = [
            (group, {"type": "agent_channels.events", "first": seq, "last": seq, "texts": [group]})
            for seq in (1, 2, 3)
            for group in groups
        ]
        await send(items)
        got: dict[str, list[int]] = {}
        async with asyncio.timeout(10):
            for _ in items:
                message = await receiver_layer.receive(channel)
                got.setdefault(message["texts"][0], []).append(message["first"])
        return got

    got = asyncio.run(main())
    assert got == {group: [1, 2, 3] for group in groups}
    assert sum(executed) == 120 and len(executed) == shards


def test_the_wire_delivers_in_order_through_the_pipeline():
    """LiveWire on the PUB/SUB layer: one group's events, sent from another thread in many
    small batches, arrive complete and in seq order."""
    layer = pubsub_layer([settings.REDIS_URL])
    wire = LiveWire("default")
    wire.layer = layer
    wire._pipelined = pipelined_sender(layer)
    assert wire._pipelined is not None

    async def main() -> list[int]:
        channel = await layer.new_channel()
        await layer.group_add("pipelined-wire", channel)
        for first in range(1, 201, 4):
            wire.send_many(
                [
                    (
                        "pipelined-wire",
                        {
                            "type": "agent_channels.events",
                            "first": seq,
                            "last": seq,
                            "texts": [str(seq)],
                        },
                    )
                    for seq in range(first, first + 4)
                ]
            )
        seen: list[int] = []
        async with asyncio.timeout(10):
            while len(seen) < 200:
                message = await layer.receive(channel)
                seen.extend(range(message["first"], message["last"] + 1))
        return seen

    assert asyncio.run(main()) == list(range(1, 201))
    assert wire.drain(5)
    wire.close()


def test_a_round_that_cannot_reach_redis_is_logged_and_drained_and_the_wire_goes_on(caplog):
    """Nothing listens on the first host: the round fails, is counted as sent (the log has
    it), and the next round on a reachable layer goes out."""
    unreachable = pubsub_layer(["redis://127.0.0.1:1/0"])
    wire = LiveWire("default")
    wire.layer = unreachable
    wire._pipelined = pipelined_sender(unreachable)
    message = {"type": "agent_channels.events", "first": 1, "last": 1, "texts": ["x"]}
    with caplog.at_level(logging.ERROR, logger="agent_channels.channel.wire"):
        assert wire.send_many([("pipelined-down", message)])
        assert wire.drain(10)
    assert "live send to 1 groups failed" in caplog.text
    wire.close()

    layer = pubsub_layer([settings.REDIS_URL])
    wire = LiveWire("default")
    wire.layer = layer
    wire._pipelined = pipelined_sender(layer)

    async def main() -> dict:
        channel = await layer.new_channel()
        await layer.group_add("pipelined-up", channel)
        wire.send_many([("pipelined-up", message)])
        async with asyncio.timeout(10):
            return await layer.receive(channel)

    assert asyncio.run(main())["texts"] == ["x"]
    wire.close()
