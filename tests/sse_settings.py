"""tests.settings with short event-stream timings and a small send buffer (tests/test_sse.py)."""

from tests.settings import *  # noqa: F403

AGENT_CHANNELS = {**AGENT_CHANNELS, "SSE_KEEPALIVE_SECONDS": 0.3, "SEND_BUFFER_BYTES": 64 * 1024}  # noqa: F405
