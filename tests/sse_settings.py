"""tests.settings with short event-stream and presence timings and a small send buffer
(tests/test_sse.py, tests/test_presence.py)."""

from tests.settings import *  # noqa: F403

AGENT_CHANNELS = {
    **AGENT_CHANNELS,  # noqa: F405
    "SSE_KEEPALIVE_SECONDS": 0.3,
    "SEND_BUFFER_BYTES": 64 * 1024,
    "PRESENCE_TTL_SECONDS": 1.5,
}
