"""WebSocket Origin validation: a browser page from another site must not open a socket."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import validate_host

from agent_channels.conf import get_config

__all__ = ["origin_allowed"]


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers", ())
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def origin_allowed(scope: dict[str, Any]) -> bool:
    """True when the handshake's Origin is allowed.

    ``ALLOWED_ORIGINS`` (full origins such as ``"https://app.example.com"``, or
    ``"*"``) decides when set; otherwise the origin's host must match
    ``ALLOWED_HOSTS`` the way Django matches the Host header. A missing or
    ``null`` Origin is denied: browsers always send one.
    """
    origin = _header(scope, b"origin")
    if not origin or origin == "null":
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:  # e.g. an unclosed IPv6 bracket: "http://[::1"
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    allowed_origins = get_config()["ALLOWED_ORIGINS"]
    if allowed_origins is not None:
        normalized = f"{parts.scheme}://{parts.netloc}".lower()
        return "*" in allowed_origins or normalized in {
            o.lower().rstrip("/") for o in allowed_origins
        }
    allowed_hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    host = parts.hostname
    if ":" in host:  # an IPv6 literal: ALLOWED_HOSTS spells it in brackets
        host = f"[{host}]"
    return validate_host(host, allowed_hosts)
