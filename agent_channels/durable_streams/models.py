"""Durable Streams storage: a stream, its chunks, and its idempotent producers.

Imported by ``agent_channels.models`` so the models belong to the ``agent_channels`` app.
"""

from __future__ import annotations

from django.db import models

__all__ = ["Stream", "StreamChunk", "StreamProducer"]


class Stream(models.Model):
    """One Durable Stream: a URL path under the mount and its configuration and tail."""

    path = models.CharField(max_length=1024, unique=True)
    content_type = models.CharField(max_length=255)
    #: The byte position after the newest chunk: the stream's tail offset.
    tail = models.PositiveBigIntegerField(default=0)
    closed = models.BooleanField(default=False)
    #: The idempotent producer request that closed the stream: {"id", "epoch", "seq"}.
    closed_by = models.JSONField(null=True, blank=True)
    #: The last ``Stream-Seq`` a writer sent (compared as a string). NULL, not "", means
    #: none yet: the empty string is a value a writer may send.
    writer_seq = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    ttl_seconds = models.PositiveBigIntegerField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    #: ``Stream-Expires-At`` exactly as the creator sent it: HEAD echoes it and an
    #: idempotent PUT compares it.
    expires_at_text = models.CharField(max_length=64, blank=True, default="")
    #: Reads and appends (not HEAD) move this forward; a TTL counts from it.
    accessed_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    forked_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="forks"
    )
    #: Data before this position comes from ``forked_from``.
    fork_offset = models.PositiveBigIntegerField(null=True, blank=True)
    fork_sub_offset = models.PositiveBigIntegerField(default=0)
    #: Deleted (or expired) while forks still read its data: 410 to clients.
    soft_deleted = models.BooleanField(default=False)

    class Meta:
        ordering = ["path"]

    def __str__(self) -> str:
        return self.path


class StreamChunk(models.Model):
    """The bytes of one append. ``end`` is the stream position right after them."""

    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="chunks")
    end = models.PositiveBigIntegerField()
    data = models.BinaryField()

    class Meta:
        ordering = ["stream", "end"]
        constraints = [
            models.UniqueConstraint(fields=["stream", "end"], name="agch_ds_chunk_end_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.stream_id} ..{self.end}"


class StreamProducer(models.Model):
    """Kafka-style idempotent producer state, per stream and producer id."""

    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="producers")
    producer_id = models.CharField(max_length=255)
    epoch = models.PositiveBigIntegerField()
    last_seq = models.PositiveBigIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["stream", "producer_id"], name="agch_ds_producer_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.producer_id} epoch {self.epoch} seq {self.last_seq}"
