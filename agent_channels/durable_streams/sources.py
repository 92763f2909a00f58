"""What the read views serve: a stored stream, or an agent channel's event log."""

from __future__ import annotations

import json
from typing import Protocol

from channels.db import database_sync_to_async

from agent_channels.channel.log import read as read_log
from agent_channels.channel.names import event_group
from agent_channels.conf import get_config
from agent_channels.durable_streams import store
from agent_channels.durable_streams.live import stream_group
from agent_channels.models import Channel

__all__ = ["ChannelSource", "Source", "StreamSource"]


class Source(Protocol):
    #: Layer groups whose messages mean "this stream may have changed".
    groups: list[str]

    async def head(self) -> store.Head: ...

    async def read(self, after: int | None) -> store.ReadResult: ...

    def etag_id(self, head: store.Head) -> str: ...


class StreamSource:
    """A stream stored by :mod:`agent_channels.durable_streams.store`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.groups = [stream_group(path)]

    async def head(self) -> store.Head:
        head: store.Head = await database_sync_to_async(store.head)(self.path)
        return head

    async def read(self, after: int | None) -> store.ReadResult:
        limit = get_config()["DURABLE_STREAMS_READ_BYTES"]
        result: store.ReadResult = await database_sync_to_async(store.read)(self.path, after, limit)
        result.etag = self.etag_id(result.head)
        return result

    def etag_id(self, head: store.Head) -> str:
        return str(head.pk)


class ChannelSource:
    """An agent channel: one event frame per JSON message, the offset after seq N is N.

    Read-only and never closed. Events pruned by retention answer 410 Gone, like an
    offset before a stream's retained data.
    """

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.groups = [event_group(channel)]

    def _head_sync(self) -> tuple[store.Head, int]:
        row = (
            Channel.objects.filter(name=self.channel)
            .values_list("id", "last_seq", "pruned_seq")
            .first()
        )
        if row is None:
            raise store.StreamError(404, "No such channel")
        channel_id, last_seq, pruned_seq = row
        head = store.Head(
            pk=channel_id,
            path=self.channel,
            content_type=store.JSON_TYPE,
            tail=last_seq,
            closed=False,
            ttl_seconds=None,
            expires_at_text="",
            soft_deleted=False,
        )
        return head, pruned_seq

    async def head(self) -> store.Head:
        head: store.Head = (await database_sync_to_async(self._head_sync)())[0]
        return head

    def _read_sync(self, after: int | None) -> store.ReadResult:
        head, pruned_seq = self._head_sync()
        result = store.ReadResult(head, etag=self.etag_id(head))
        if after is None or after >= head.tail:
            return result
        if after == 0:
            after = pruned_seq  # "from the start" means from the oldest event still kept
        if after < pruned_seq:
            raise store.StreamError(
                410, f"Events up to offset {store.format_offset(pruned_seq)} were pruned."
            )
        events = read_log(head.pk, after, head.tail, get_config()["REPLAY_BATCH_SIZE"])
        result.chunks = [
            (e.seq, json.dumps(e.to_frame(), separators=(",", ":")).encode()) for e in events
        ]
        result.up_to_date = result.next_position >= head.tail
        return result

    async def read(self, after: int | None) -> store.ReadResult:
        result: store.ReadResult = await database_sync_to_async(self._read_sync)(after)
        return result

    def etag_id(self, head: store.Head) -> str:
        return f"c{head.pk}"
