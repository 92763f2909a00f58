"""WebSocket close codes the consumer uses; docs/protocol.rst lists them."""

__all__ = [
    "BAD_REQUEST",
    "FORBIDDEN",
    "GONE",
    "INTERNAL_ERROR",
    "TOO_MANY",
    "UNAUTHENTICATED",
]

#: The channel name or a query parameter is invalid, or ``since`` is past the head.
BAD_REQUEST = 4400
#: The connection has no authenticated user and the policy requires one.
UNAUTHENTICATED = 4401
#: The policy denies reading this channel, or the Origin is not allowed.
FORBIDDEN = 4403
#: The requested position was pruned by retention.
GONE = 4410
#: A quota refused the connection: the user holds ``MAX_SOCKETS_PER_USER`` sockets already.
TOO_MANY = 4429
#: The server failed; the client should reconnect with ``since``.
INTERNAL_ERROR = 4500
