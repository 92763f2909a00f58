"""How many bytes the server holds for a client that has not read them yet.

ASGI gives an application no backpressure: ``send`` returns at once and daphne
(Twisted) buffers whatever the client does not read, without bound. Under daphne we
can read that buffer's size from the transport behind the ``send`` callable; a
consumer that sees it pass ``SEND_BUFFER_BYTES`` stops sending and later catches the
client up from the log, so a stalled client costs a bounded amount of memory.
Under other servers :func:`pending_bytes` returns None and no limit applies.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["find_transport", "pending_bytes", "server_send"]


def find_transport(send: Any) -> Any:
    """Walk from an ASGI ``send`` callable through channels' middleware to daphne's transport."""
    for _ in range(8):
        if isinstance(send, functools.partial):
            protocol = send.args[0] if send.args else None
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                return transport
            send = send.func
        owner = getattr(send, "__self__", None)
        inner = getattr(owner, "real_send", None)
        if inner is None:
            return None
        send = inner
    return None


def server_send(send: Any) -> Any:
    """The server's own ``send`` behind channels' session wrapper, for frames after accept.

    The wrapper looks at the session on every message to save it on responses and accepts;
    a ``websocket.send`` never saves anything, and on a replay of thousands of events those
    lookups show. Returns ``send`` itself when there is no such wrapper.
    """
    for _ in range(8):
        owner = getattr(send, "__self__", None)
        inner = getattr(owner, "real_send", None)
        if inner is None:
            return send
        send = inner
    return send


def pending_bytes(transport: Any) -> int | None:
    """Bytes written to ``transport`` that the peer has not taken yet, if it can tell."""
    if transport is None:
        return None
    try:
        buffered = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except AttributeError:
        return None
    return int(buffered)
