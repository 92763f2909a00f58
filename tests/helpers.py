"""Helpers the tests share (fixtures live in conftest.py; processes in procs.py, the
WebSocket test client in wsclient.py, the model server in llm_server.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(interval)


#: The permissions OwnerAccessPolicy checks for channels a user does not own.
OPERATOR_PERMISSIONS = ("view_all_channels", "control_all_runs")


def create_operator(user_model: Any, username: str, permissions: tuple[str, ...] =
                    OPERATOR_PERMISSIONS) -> Any:
    """A staff user granted the agent_channels permissions (staff alone sees nothing)."""
    from django.contrib.auth.models import Permission

    user = user_model.objects.create_user(username, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="agent_channels", codename__in=permissions))
    # A fresh instance: has_perm caches permissions on the object it was asked on.
    return user_model.objects.get(pk=user.pk)


@dataclass
class Seen:
    """What one client received, and what was wrong with it."""

    kind: str
    seqs: list[int] = field(default_factory=list)
    frames: dict[int, tuple[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    gaps: int = 0
    connects: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    def add(self, seq: int, name: str, data: Any) -> None:
        if seq <= self.last:
            self.duplicates += 1
            return
        if seq != self.last + 1:
            self.gaps += 1
        self.seqs.append(seq)
        self.frames[seq] = (name, data)


async def follow_socket(seen: Seen, port: int, cookie: str, channel: str, done: Any,
                        origin: str | None = None) -> None:
    """Follow a channel over the WebSocket on ``port`` until ``done`` is set; on any close,
    reconnect with ``?since=<last seq>`` (what the packaged client does)."""
    import asyncio
    import json

    import websockets

    origin = origin or f"http://127.0.0.1:{port}"
    while not done.is_set():
        url = f"ws://127.0.0.1:{port}/ws/agent-channels/{channel}/?since={seen.last}"
        seen.connects += 1
        try:
            async with websockets.connect(
                url, additional_headers={"Cookie": cookie, "Origin": origin}, open_timeout=5,
            ) as ws:
                while not done.is_set():
                    try:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                    except TimeoutError:
                        continue
                    if frame["type"] == "error":
                        seen.errors.append(frame["code"])
                        break
                    if frame["type"] == "event":
                        seen.add(frame["seq"], frame["event"], frame["data"])
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException):
            pass
        await asyncio.sleep(0.2)
