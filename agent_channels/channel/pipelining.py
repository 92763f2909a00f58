"""Sending a round of group messages in one Redis pipeline, where the layer allows it.

channels' layer API sends one group message per call. On channels-redis's PUB/SUB layer
each call is a ``PUBLISH`` round trip under its shard's lock. A busy worker announcing a
batched flush on a hundred channels paid a hundred round trips, in a thread that has to win
the GIL back from a hundred run threads after every socket write and read: such a round
took 100-500 ms, and the last channels' watchers waited for all of it. Sent as one
pipeline per shard, the round costs one round trip.

The pipeline publishes exactly what ``group_send`` would (the layer's channel names, shard
choice and serializer), so consumers see no difference. It uses channels-redis internals:
:func:`pipelined_sender` offers it only when the layer has them, and the suite runs it
against the installed channels-redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["PipelinedSend", "pipelined_sender"]

PipelinedSend = Callable[[Sequence[tuple[str, dict[str, Any]]]], Awaitable[None]]


def pipelined_sender(layer: Any) -> PipelinedSend | None:
    """A coroutine function sending ``[(group, message), ...]`` in order, one pipeline per
    Redis shard, for channels-redis's ``RedisPubSubChannelLayer`` itself; None for any
    other layer (subclasses included)."""
    try:
        from channels_redis.pubsub import (
            RedisPubSubChannelLayer,
            RedisPubSubLoopLayer,
            RedisSingleShardConnection,
        )
    except ImportError:  # pragma: no cover - channels-redis is a dependency
        return None
    if type(layer) is not RedisPubSubChannelLayer:
        return None  # a subclass may send its own way: it keeps its group_send
    needed = (
        (RedisPubSubChannelLayer, ("_get_layer", "serialize")),
        (RedisPubSubLoopLayer, ("_get_group_channel_name", "_get_shard")),
        (RedisSingleShardConnection, ("_ensure_redis",)),
    )
    if not all(hasattr(cls, name) for cls, names in needed for name in names):
        return None  # a channels-redis this was not written against: plain group_send

    async def send(items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        loop_layer = layer._get_layer()
        by_shard: dict[int, tuple[Any, list[tuple[str, bytes]]]] = {}
        for group, message in items:
            name = loop_layer._get_group_channel_name(group)
            shard = loop_layer._get_shard(name)
            by_shard.setdefault(id(shard), (shard, []))[1].append((name, layer.serialize(message)))
        for shard, publishes in by_shard.values():
            # The shard's lock, as its own publish takes it: its client is (re)made under it.
            async with shard._lock:
                shard._ensure_redis()
                pipe = shard._redis.pipeline(transaction=False)
                for name, payload in publishes:
                    pipe.publish(name, payload)
                await pipe.execute()

    return send
