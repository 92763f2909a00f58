"""Helpers for driving the consumer in-process with channels' WebsocketCommunicator."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from agent_channels.routing import websocket_urlpatterns

APP = URLRouter(websocket_urlpatterns)
ORIGIN = (b"origin", b"http://localhost")


def path_for(channel: str, since: int | None = None) -> str:
    path = f"/ws/agent-channels/{quote(channel, safe='')}/"
    return path if since is None else f"{path}?since={since}"


async def connect(channel: str, user: Any, since: int | None = None,
                  headers: list[tuple[bytes, bytes]] | None = None) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(APP, path_for(channel, since),
                                         headers=[ORIGIN] if headers is None else headers)
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def recv(communicator: WebsocketCommunicator, timeout: float = 5) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await communicator.receive_from(timeout))
    return frame


async def recv_events(communicator: WebsocketCommunicator, count: int,
                      timeout: float = 10) -> list[dict[str, Any]]:
    frames = []
    while len(frames) < count:
        frame = await recv(communicator, timeout)
        if frame["type"] == "event":
            frames.append(frame)
    return frames
