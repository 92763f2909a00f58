"""Refuse WebSocket handshakes cleanly while the database is away.

Channels' ``AuthMiddlewareStack`` loads the session and the user before the consumer
runs; when that query fails, the exception escapes the application and the server
answers the handshake with HTTP 500, which browsers report as an anonymous failure.
:class:`UnavailableMiddleware` wraps the stack and answers such a handshake as the
consumer answers its own database failures: accept, an ``unavailable`` error frame,
close 4500; the client reconnects later with ``since``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from agent_channels.channel.connections import TRANSIENT_ERRORS
from agent_channels.ws import close_codes

__all__ = ["UnavailableMiddleware"]

logger = logging.getLogger(__name__)


class UnavailableMiddleware:
    """ASGI middleware: ``UnavailableMiddleware(AuthMiddlewareStack(URLRouter(...)))``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        # Only a failure before the application read the handshake is ours to answer; the
        # consumer answers its own. ``send`` is passed through untouched: the consumer finds
        # the server's transport behind it (backpressure).
        started = False

        async def watched_receive() -> Any:
            nonlocal started
            started = True
            return await receive()

        try:
            await self.app(scope, watched_receive, send)
        except TRANSIENT_ERRORS as exc:
            if started:
                raise
            logger.warning("agent_channels: WebSocket handshake refused, database away: %s", exc)
            message = await receive()
            if message.get("type") != "websocket.connect":
                return
            await send({"type": "websocket.accept"})
            frame = {
                "type": "error",
                "code": "unavailable",
                "message": "The server cannot reach its database; reconnect shortly.",
            }
            await send({"type": "websocket.send", "text": json.dumps(frame)})
            await send({"type": "websocket.close", "code": close_codes.INTERNAL_ERROR})
