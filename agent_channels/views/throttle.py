"""Per-user HTTP throttles: a token bucket per user and endpoint, kept in Django's cache.

The bucket is stored as one number, the time at which it will be full again (the generic
cell rate algorithm), so a check is one cache read and at most one write. With a cache that
processes share (Redis, Memcached) the limit holds across processes, approximately: two
requests of one user that arrive at the same instant may both read the same state. With
the per-process ``LocMemCache`` it holds per process.
"""

from __future__ import annotations

import math
import time
from typing import Any

from django.core.cache import caches
from django.http import HttpRequest, JsonResponse

from agent_channels.conf import get_config
from agent_channels.views.http import error

__all__ = ["throttle"]


def _who(request: HttpRequest) -> str:
    user = request.user
    if user.is_authenticated:
        return f"u{user.pk}"
    # Anonymous requests are refused by the access check, but they still cost queries.
    return f"a{request.META.get('REMOTE_ADDR', '')}"


def retry_after(key: str, rate: float, burst: int, now: float | None = None) -> float:
    """Take one token from the bucket ``key``; 0 if there was one, else seconds to wait."""
    cache = caches[get_config()["THROTTLE_CACHE"]]
    now = time.time() if now is None else now
    interval = 1.0 / rate
    full_at: Any = cache.get(key)
    start = max(float(full_at), now) if isinstance(full_at, int | float) else now
    new_full_at = start + interval
    if new_full_at - now > interval * burst:
        return new_full_at - now - interval * burst
    cache.set(key, new_full_at, timeout=math.ceil(new_full_at - now) + 1)
    return 0.0


def throttle(request: HttpRequest, endpoint: str) -> JsonResponse | None:
    """A 429 ``throttled`` answer with Retry-After when the user's bucket for ``endpoint``
    (``"runs"`` or ``"messages"``) is empty; None when the request may go on."""
    config = get_config()
    rate = float(config[f"HTTP_{endpoint.upper()}_RATE"] or 0)
    if rate <= 0:
        return None
    burst = max(1, int(config[f"HTTP_{endpoint.upper()}_BURST"]))
    wait = retry_after(f"agch:throttle:{endpoint}:{_who(request)}", rate, burst)
    if wait <= 0:
        return None
    seconds = max(1, math.ceil(wait))
    response = error(
        429,
        "throttled",
        f"Too many requests; try again in {seconds} s.",
        retry_after=seconds,
    )
    response["Retry-After"] = str(seconds)
    return response
