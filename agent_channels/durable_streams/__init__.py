"""A Durable Streams server: the open HTTP protocol for append-only, resumable streams.

Mount it with ``path("streams/", include("agent_channels.durable_streams.urls"))``.
Streams live in the database; readers that wait (long-poll, SSE) are woken over the
channel layer. Every agent channel is also readable here, read-only, as a JSON stream
at ``channels/<channel name>``. See docs/durable_streams.rst.
"""
