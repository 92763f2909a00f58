"""The model call: the openai SDK's streaming chat completions, abortable from another thread."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent_channels.conf import get_config

__all__ = ["ModelResult", "StreamAborted", "default_model", "get_client", "stream_chat"]


class StreamAborted(Exception):
    """The stream was closed on purpose (interrupt, cancel, time limit)."""


@dataclass
class ModelResult:
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    aborted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "tool_calls": self.tool_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "aborted": self.aborted,
        }


_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def default_model() -> str:
    return str(get_config()["OPENAI_MODEL"] or os.environ.get("OPENAI_MODEL") or "gpt-4o-mini")


def get_client() -> Any:
    """One SDK client (and HTTP connection pool) per process and configuration."""
    import openai  # here, not at the top: the SDK costs ~0.5 s to import, and only
    # processes that call a model need it.

    config = get_config()
    key = (
        os.getpid(),
        config["OPENAI_BASE_URL"],
        config["OPENAI_API_KEY"],
        config["MODEL_TIMEOUT"],
        os.environ.get("OPENAI_BASE_URL"),
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            kwargs: dict[str, Any] = {"timeout": float(config["MODEL_TIMEOUT"]), "max_retries": 0}
            if config["OPENAI_BASE_URL"]:
                kwargs["base_url"] = config["OPENAI_BASE_URL"]
            if config["OPENAI_API_KEY"]:
                kwargs["api_key"] = config["OPENAI_API_KEY"]
            client = _clients[key] = openai.OpenAI(**kwargs)
        return client


class AbortHandle:
    """Lets another thread cut the HTTP stream so no more tokens are generated or paid for.

    The other thread (the control listener's event loop, say) must not call the SDK's
    ``close()``: closing a response while its reader is inside ``recv()`` can wait on
    the reader's locks until the read times out. Shutting the socket down is safe from
    any thread and makes the blocked ``recv()`` return at once; the reader then closes
    the response itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: Any = None
        self.aborted = False

    def attach(self, stream: Any) -> None:
        """From the reader thread, once the response headers arrived."""
        with self._lock:
            self._stream = stream
            aborted = self.aborted
        if aborted:
            self._shutdown(stream)

    def abort(self) -> None:
        """From any thread."""
        with self._lock:
            self.aborted = True
            stream = self._stream
        if stream is not None:
            self._shutdown(stream)

    @staticmethod
    def _shutdown(stream: Any) -> None:
        with contextlib.suppress(Exception):
            network = stream.response.extensions["network_stream"]
            sock = network.get_extra_info("socket")
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """From the reader thread: release the response (and its pool connection)."""
        with self._lock:
            stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


def stream_chat(
    *,
    messages: list[dict[str, Any]],
    model: str,
    tools: list[dict[str, Any]],
    params: dict[str, Any],
    on_text: Callable[[str], None],
    handle: AbortHandle,
) -> ModelResult:
    """Stream one chat completion; ``on_text`` gets content deltas as they arrive.

    Raises :class:`StreamAborted` (with what arrived so far in ``args[0]``) when
    ``handle`` was aborted.
    """
    client = get_client()
    request: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        **params,
    }
    if tools:
        request["tools"] = tools
    result = ModelResult()
    calls: dict[int, dict[str, Any]] = {}
    text: list[str] = []
    try:
        stream = client.chat.completions.create(**request)
        handle.attach(stream)
        for chunk in stream:
            if handle.aborted:
                break
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                result.prompt_tokens = int(usage.prompt_tokens or 0)
                result.completion_tokens = int(usage.completion_tokens or 0)
            for choice in chunk.choices or ():
                delta = choice.delta
                if delta is not None and delta.content:
                    text.append(delta.content)
                    on_text(delta.content)
                for call in (delta.tool_calls if delta is not None else None) or ():
                    slot = calls.setdefault(
                        call.index,
                        {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                    )
                    if call.id:
                        slot["id"] = call.id
                    if call.function is not None:
                        if call.function.name:
                            slot["function"]["name"] += call.function.name
                        if call.function.arguments:
                            slot["function"]["arguments"] += call.function.arguments
                if choice.finish_reason:
                    result.finish_reason = choice.finish_reason
    except Exception:
        if not handle.aborted:
            raise
    finally:
        result.content = "".join(text)
    if handle.aborted:
        result.aborted = True
        handle.close()
        raise StreamAborted(result)
    result.tool_calls = [calls[i] for i in sorted(calls)]
    return result


def parse_arguments(raw: str) -> dict[str, Any]:
    """The model's tool arguments as a dict; raises ValueError with a readable message."""
    try:
        value = json.loads(raw or "{}")
    except ValueError as exc:
        raise ValueError(f"The tool arguments are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("The tool arguments must be a JSON object.")
    return value
