"""The ``AGENT_CHANNELS`` settings dict, merged over documented defaults.

Read it with :func:`get_config`; the result is cached and dropped whenever
Django's ``setting_changed`` signal fires for ``AGENT_CHANNELS`` (tests with
``override_settings`` see their values at once).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = ["DEFAULTS", "get_config"]

#: Every key a project may set, with its default. docs/settings.rst mirrors this dict.
DEFAULTS: dict[str, Any] = {
    # Who may read and send on a channel: a dotted path to an AccessPolicy subclass.
    "ACCESS_POLICY": "agent_channels.access.OwnerAccessPolicy",
    # Alias in CHANNEL_LAYERS used for the live wire.
    "CHANNEL_LAYER": "default",
    # Token deltas arriving faster than this are coalesced into one persisted event.
    "COALESCE_WINDOW_MS": 30,
    # Under load a process's batched flush slot doubles up to this (each delta then carries
    # more tokens) instead of events queueing behind each other. 0 keeps the slot fixed.
    "COALESCE_MAX_WINDOW_MS": 250,
    # Origins allowed to open WebSockets; None means "the hosts in ALLOWED_HOSTS".
    "ALLOWED_ORIGINS": None,
    # Largest client frame accepted, in bytes of JSON text.
    "MAX_CLIENT_FRAME_BYTES": 64 * 1024,
    # The largest WebSocket message the server accepts (daphne: --websocket-max-message-size,
    # 1 MiB by default); bigger ones it drops, closing the socket. Check W020 compares the two.
    "SERVER_MAX_MESSAGE_BYTES": 1024 * 1024,
    # Client frames per second a connection may send (token bucket) and the burst it may save up.
    "CLIENT_RATE": 10.0,
    "CLIENT_BURST": 20,
    # An open socket asks the access policy again this often (and on every control frame), so
    # a deactivated or logged-out user, or one who lost the channel, is cut off. 0 turns the
    # periodic check off.
    "ACCESS_RECHECK_SECONDS": 30.0,
    # --- Ownership and quotas (docs/security.rst) ---
    # The namespace of channel names a user may create under the default policy, formatted
    # with the user's primary key; None: only users with control_all_runs create channels.
    "USER_CHANNEL_PREFIX": "user:{user_id}/",
    # Runs (queued, running or waiting) one user may have at once; None: no limit.
    "MAX_ACTIVE_RUNS_PER_USER": 10,
    # Runs waiting behind the active one on a channel (double-texting "enqueue"); None: no limit.
    "MAX_QUEUED_RUNS_PER_CHANNEL": 10,
    # WebSockets one logged-in user may hold open in one server process; None: no limit.
    "MAX_SOCKETS_PER_USER": 50,
    # With a shared THROTTLE_CACHE: how long a dead process's socket slots outlive it.
    "SOCKET_SLOT_SECONDS": 60,
    # HTTP throttles per user (token buckets in THROTTLE_CACHE): requests per second and the
    # burst a user may save up, for POST runs/ and POST messages/. A rate of 0 turns one off.
    "HTTP_RUNS_RATE": 0.5,
    "HTTP_RUNS_BURST": 10,
    "HTTP_MESSAGES_RATE": 5.0,
    "HTTP_MESSAGES_BURST": 20,
    # The alias in CACHES the throttles keep their buckets in (shared by processes if the
    # cache is: Redis or Memcached, not the per-process LocMemCache).
    "THROTTLE_CACHE": "default",
    # Bytes of events one page of GET events/ carries at most (at least one event): a page
    # stops early, with has_more, instead of growing to hundreds of MB.
    "MAX_PAGE_BYTES": 1024 * 1024,
    # Events read from the log per query while a connection catches up.
    "REPLAY_BATCH_SIZE": 500,
    # Live frames a connection keeps in memory while it catches up; past this it rereads the log.
    "LIVE_CACHE_FRAMES": 256,
    # Bytes queued in the server towards one client before it counts as "behind".
    "SEND_BUFFER_BYTES": 1024 * 1024,
    # Live frames larger than this travel as a notification only; consumers read them from the log.
    "MAX_WIRE_FRAME_BYTES": 32 * 1024,
    # Events whose frame is larger than this reach WebSocket and SSE followers as a placeholder
    # {"too_large": true, "url": ...} to read over HTTP: a message over a client's limit
    # (1 MiB in many) would close its socket again at every resume. 0 sends every frame whole.
    "MAX_SENT_FRAME_BYTES": 512 * 1024,
    # The largest event data accepted at publish time, in bytes of JSON; larger is refused
    # with InvalidEvent (a tool result: a tool error the model sees). 0: no limit.
    "MAX_EVENT_BYTES": 16 * 1024 * 1024,
    # After live events stop for this long, a connection asks the log once for the newest
    # seq, so a tail the layer dropped is not stuck until the next event. 0 turns it off.
    "HEAD_CHECK_MS": 500,
    # Processes join the channel-layer groups of their sockets and runs again this often, and
    # read from the log what the layer may have lost meanwhile: a Redis that restarted empty
    # forgets memberships. 0 turns it off.
    "GROUP_REFRESH_SECONDS": 10.0,
    # Presence: a connection counts as watching until this many seconds after its last
    # refresh (it refreshes three times per period). 0 turns presence off.
    "PRESENCE_TTL_SECONDS": 30.0,
    # Server-Sent Events: a comment goes out after this many quiet seconds, so proxies and
    # clients see a live connection (and the stream asks the log whether it missed anything).
    "SSE_KEEPALIVE_SECONDS": 15.0,
    # The HTTP events endpoint: default and largest page.
    "PAGE_SIZE": 100,
    "MAX_PAGE_SIZE": 1000,
    # How long WebSocket connections may live in the server (daphne's --websocket_timeout,
    # 86400 s by default): compared with the layer's group_expiry by check agent_channels.W002.
    "WEBSOCKET_TIMEOUT": 86400,
    # Peak events per second one server process is expected to receive on the live wire:
    # compared with the layer's capacity by check agent_channels.W003.
    "EXPECTED_EVENT_RATE": 100,
    # --- The runtime (agent_channels.runtime, docs/runtime.rst) ---
    # Agents by name: {"name": "dotted.path.to.function"}. Functions decorated with
    # @agent("name") in an installed app's agents.py register themselves as well.
    "AGENTS": {},
    # Where runs execute: a dotted path to a RunBackend subclass, or None to pick Celery when
    # settings.CELERY_BROKER_URL is set and the in-process thread pool otherwise.
    "RUN_BACKEND": None,
    # The Celery app runs are sent with (dotted path); None means celery.current_app.
    "CELERY_APP": None,
    # The Celery queue runs are sent to; None means the app's default queue.
    "CELERY_QUEUE": None,
    # Threads of the in-process backend: runs executing at once in one web process. A run
    # mostly waits on its model, so one process carries many (docs/deployment.rst).
    "INPROCESS_WORKERS": 100,
    # What starting a run does while another run of the channel is active:
    # "reject", "enqueue" (start after it) or "interrupt" (stop it, then start).
    "DOUBLE_TEXTING": "reject",
    # Seconds a run may take from its first start before it fails; a run may set its own.
    "RUN_TIME_LIMIT": 3600,
    # Seconds one tool call may take before the model gets a time-limit error as its result
    # (@tool(time_limit=...) overrides it; None: only the run's limit). docs/runtime.rst says
    # why an overrunning tool's thread is abandoned, not killed.
    "TOOL_TIME_LIMIT": 60.0,
    # Celery's soft and hard time limits of a run's task: the run's remaining time plus this
    # margin (soft), and twice it (hard: the worker child is killed and replaced).
    "CELERY_TIME_LIMIT_MARGIN": 30.0,
    # Interrupts (and inputs) a running run holds in memory before it takes them; past this a
    # message is refused with a control.rejected event (code "control_queue_full").
    "MAX_PENDING_CONTROL": 64,
    # A worker proves its runs are alive this often (one UPDATE per process per beat)...
    "HEARTBEAT_SECONDS": 1.5,
    # ...and a running run whose heartbeat is older than this is presumed dead and restarted
    # (at least 3 beats: check agent_channels.E111).
    "STALE_AFTER_SECONDS": 6.0,
    # How often each worker process looks for dead runs (0 disables the reaper). With the
    # two above, a lost worker's run continues elsewhere about 4-8 s after the loss.
    "REAP_EVERY_SECONDS": 2.0,
    # Starts a run gets (the first included) before a dead worker makes it fail instead.
    "MAX_ATTEMPTS": 3,
    # A run's writes (events, journal, status) retry on a fresh connection for this long when
    # the database connection is lost or the database is briefly away, instead of failing.
    "DB_RETRY_SECONDS": 10.0,
    # The model for ctx.chat(); None means the OPENAI_MODEL environment variable, then gpt-4o-mini.
    "OPENAI_MODEL": None,
    # Passed to openai.OpenAI(); None leaves the SDK to read OPENAI_BASE_URL / OPENAI_API_KEY.
    "OPENAI_BASE_URL": None,
    "OPENAI_API_KEY": None,
    # Seconds without a byte from the model before a model call fails.
    "MODEL_TIMEOUT": 120.0,
    # The model API of ctx.chat(): "chat_completions" (any OpenAI-compatible server) or
    # "responses" (OpenAI's Responses API); an agent or a call may choose otherwise.
    "OPENAI_API": "chat_completions",
    # Responses API calls in background mode: a run whose worker dies re-attaches to the
    # response the model goes on generating, instead of paying for it again.
    "OPENAI_BACKGROUND": False,
    # Model calls one ctx.chat() may make while the model keeps asking for tools.
    "MAX_TOOL_ROUNDS": 10,
    # {"model": [USD per 1M prompt tokens, USD per 1M completion tokens]} for the admin's
    # estimated cost of a run.
    "MODEL_PRICES": {},
    # --- Durable Streams (agent_channels.durable_streams, docs/durable_streams.rst) ---
    # Who may read and write streams other than agent channels: a StreamPolicy subclass.
    "DURABLE_STREAMS_POLICY": "agent_channels.durable_streams.access.StaffStreamPolicy",
    # Seconds a long-poll waits for data before answering 204; also the SSE keep-alive interval.
    "DURABLE_STREAMS_LONG_POLL_SECONDS": 20.0,
    # Seconds an SSE response lasts before the server ends it (clients reconnect).
    "DURABLE_STREAMS_SSE_SECONDS": 60.0,
    # Largest append (or initial PUT body) accepted, in bytes; larger ones get 413.
    "DURABLE_STREAMS_MAX_APPEND_BYTES": 4 * 1024 * 1024,
    # Bytes a catch-up read returns at most (at least one whole append).
    "DURABLE_STREAMS_READ_BYTES": 1024 * 1024,
    # Origins that may call the streams from a browser on another origin: a list, or "*".
    "DURABLE_STREAMS_CORS_ORIGINS": [],
    # --- AG-UI (agent_channels.agui, docs/agui.rst) ---
    # Largest RunAgentInput accepted, in bytes of JSON (it carries the whole conversation).
    "AGUI_MAX_INPUT_BYTES": 1024 * 1024,
}


@cache
def get_config() -> dict[str, Any]:
    """Return the merged settings dict. Unknown keys are kept so check E002 can name them."""
    user: dict[str, Any] = getattr(settings, "AGENT_CHANNELS", None) or {}
    return {**DEFAULTS, **user}


@receiver(setting_changed)
def _reset_config(*, setting: str, **kwargs: Any) -> None:
    # Whoever caches something derived from settings owns its own receiver (access, wire).
    if setting == "AGENT_CHANNELS":
        get_config.cache_clear()
