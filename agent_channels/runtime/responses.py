"""The model call on OpenAI's Responses API, including background mode.

A *background* response (``background=True``, which needs ``store=True``) goes on
generating on the provider's side when nobody is connected: closing the HTTP stream
does not stop it, only :func:`cancel` does. Every stream event carries a
``sequence_number`` counting from 0, and :func:`resume` re-attaches to a stored response
after a given one (``GET /responses/{id}?stream=true&starting_after=N``: the server
filters, so nothing before N travels again). That is what lets a run continue a model
call its dead worker started, paying for no token twice.

Requests and results use the chat completions shapes the rest of the runtime speaks:
:func:`to_input` turns chat messages (tool calls and tool results included) into input
items, :func:`to_tools` turns chat tool specs into the Responses API's flat ones, and
tool calls come back as ``{"id", "type": "function", "function": {"name", "arguments"}}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agent_channels.runtime.llm import AbortHandle, ModelResult, StreamAborted, get_client

__all__ = [
    "ResponseFailed",
    "ResponseGone",
    "ResponseResult",
    "cancel",
    "create",
    "resume",
    "to_input",
    "to_tools",
]

logger = logging.getLogger(__name__)


class ResponseFailed(Exception):
    """The model reported that the response failed (``response.failed`` or ``error``)."""


class ResponseGone(Exception):
    """A stored response cannot be resumed: it expired, failed or was cancelled."""


@dataclass
class ResponseResult(ModelResult):
    """A :class:`~agent_channels.runtime.llm.ModelResult` with the Responses API's extras."""

    #: The response's id, known from its first event (``response.created``).
    response_id: str | None = None
    #: The ``sequence_number`` of the last event applied to this result.
    sequence_number: int | None = None
    #: ``queued``, ``in_progress``, ``completed``, ``incomplete``, ``failed``, ``cancelled``.
    status: str | None = None
    #: The complete answer text from the final response (a resumed stream's ``content``
    #: holds only what arrived after ``starting_after``).
    output_text: str | None = None
    #: Reasoning summary text, when the request asked for one and the model gave it.
    reasoning: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "response_id": self.response_id,
            "sequence_number": self.sequence_number,
            "status": self.status,
            "reasoning": self.reasoning,
        }


def to_tools(specs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat completions tool specs (``{"type": "function", "function": {...}}``) made flat."""
    flat = []
    for spec in specs:
        function = spec.get("function")
        if spec.get("type") == "function" and isinstance(function, dict):
            flat.append({"type": "function", **function})
        else:
            flat.append(dict(spec))
    return flat


def to_input(messages: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat completions messages as Responses API input items.

    An assistant message's ``tool_calls`` become ``function_call`` items and ``tool``
    messages become ``function_call_output`` items; other messages keep their role and
    content (a string or a list of content parts).
    """
    items: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": str(message.get("tool_call_id", "")),
                    "output": _text(message.get("content")),
                }
            )
            continue
        if "type" in message and role is None:
            items.append(dict(message))  # already an input item
            continue
        content = message.get("content")
        if content not in (None, "", []):
            items.append({"role": role or "user", "content": content})
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            items.append(
                {
                    "type": "function_call",
                    "call_id": str(call.get("id", "")),
                    "name": str(function.get("name", "")),
                    "arguments": str(function.get("arguments", "")),
                }
            )
    return items


def _text(content: Any) -> str:
    return content if isinstance(content, str) else json.dumps(content)


def create(
    *,
    input: list[dict[str, Any]],
    model: str,
    tools: list[dict[str, Any]],
    params: dict[str, Any],
    on_text: Callable[[str], None],
    handle: AbortHandle,
    background: bool = False,
    on_event: Callable[[ResponseResult], None] | None = None,
) -> ResponseResult:
    """Create a response and stream it; ``on_text`` gets text deltas as they arrive.

    ``on_event`` is called with the result so far after every event (the response id is
    set from the first one on): a caller journals from it to :func:`resume` later.
    Raises :class:`~agent_channels.runtime.llm.StreamAborted` (with the partial result in
    ``args[0]``) when ``handle`` was aborted; a background response then goes on
    generating until :func:`cancel`.
    """
    request: dict[str, Any] = {"model": model, "input": input, "stream": True, **params}
    if tools:
        request["tools"] = tools
    if background:
        request.update(background=True, store=True)
    result = ResponseResult()
    try:
        return _consume(
            lambda: get_client().responses.create(**request), result, on_text, handle, on_event
        )
    except _Ended:
        raise ResponseFailed(
            f"The response {result.response_id} ended as {result.status or 'unknown'} "
            "before it completed."
        ) from None


def resume(
    response_id: str,
    starting_after: int | None,
    *,
    on_text: Callable[[str], None],
    handle: AbortHandle,
    on_event: Callable[[ResponseResult], None] | None = None,
) -> ResponseResult:
    """Re-attach to the stored response ``response_id`` after event ``starting_after``.

    Only what the server sends after that event is streamed (``None``: from the start).
    Raises :class:`ResponseGone` when the response can no longer be followed (unknown
    or expired, failed, cancelled).
    """
    import openai

    result = ResponseResult(response_id=response_id, sequence_number=starting_after)
    kwargs: dict[str, Any] = {"stream": True}
    if starting_after is not None:
        kwargs["starting_after"] = starting_after
    try:
        return _consume(
            lambda: get_client().responses.retrieve(response_id, **kwargs),
            result,
            on_text,
            handle,
            on_event,
        )
    except openai.NotFoundError as exc:
        raise ResponseGone(f"The stored response {response_id} is gone: {exc}") from exc
    except ResponseFailed as exc:
        raise ResponseGone(f"The stored response {response_id} failed: {exc}") from exc
    except _Ended:
        raise ResponseGone(
            f"The stored response {response_id} ended as {_status(response_id)}."
        ) from None


def cancel(response_id: str) -> bool:
    """Stop a background response from generating (and being paid for); True if it was.

    Never raises: a cancel is best effort on the way out of a model call.
    """
    try:
        response = get_client().responses.cancel(response_id, timeout=10.0)
    except Exception as exc:
        logger.warning("agent_channels: cancelling response %s failed: %s", response_id, exc)
        return False
    return getattr(response, "status", None) == "cancelled"


def _status(response_id: str) -> str:
    """What the server says the response's status is now (a stream ended without saying)."""
    try:
        return str(get_client().responses.retrieve(response_id, timeout=10.0).status)
    except Exception as exc:
        return f"unknown ({exc})"


class _Ended(Exception):
    """The stream ended without a final event: the response was cancelled elsewhere."""


def _consume(
    open_stream: Callable[[], Any],
    result: ResponseResult,
    on_text: Callable[[str], None],
    handle: AbortHandle,
    on_event: Callable[[ResponseResult], None] | None,
) -> ResponseResult:
    text: list[str] = []
    final: Any = None
    try:
        stream = open_stream()
        handle.attach(stream)
        for event in stream:
            if handle.aborted:
                break
            kind = getattr(event, "type", "")
            if kind == "response.output_text.delta":
                text.append(event.delta)
                on_text(event.delta)
            elif kind == "response.reasoning_summary_text.delta":
                result.reasoning += event.delta
            elif kind in ("response.created", "response.queued", "response.in_progress"):
                result.response_id = event.response.id
                result.status = event.response.status
            elif kind in ("response.completed", "response.incomplete"):
                final = event.response
            elif kind == "response.failed":
                error = getattr(event.response, "error", None)
                raise ResponseFailed(getattr(error, "message", None) or "The response failed.")
            elif kind == "error":
                raise ResponseFailed(getattr(event, "message", None) or "The model sent an error.")
            number = getattr(event, "sequence_number", None)
            if number is not None:
                result.sequence_number = number
            if on_event is not None:
                on_event(result)
    except (ResponseFailed, _Ended):
        raise
    except Exception:
        if not handle.aborted:
            raise
    finally:
        result.content = "".join(text)
    if handle.aborted:
        result.aborted = True
        handle.close()
        raise StreamAborted(result)
    if final is None:
        raise _Ended(result.status)
    _apply_final(result, final)
    return result


def _apply_final(result: ResponseResult, response: Any) -> None:
    result.status = response.status
    usage = response.usage
    if usage is not None:
        result.prompt_tokens = int(usage.input_tokens or 0)
        result.completion_tokens = int(usage.output_tokens or 0)
    texts: list[str] = []
    for item in response.output or ():
        if item.type == "function_call":
            result.tool_calls.append(
                {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
            )
        elif item.type == "message":
            for part in item.content or ():
                if getattr(part, "type", None) == "output_text":
                    texts.append(part.text)
        elif item.type == "reasoning" and not result.reasoning:
            with contextlib.suppress(Exception):
                result.reasoning = "".join(s.text for s in item.summary or ())
    result.output_text = "".join(texts)
    if response.status == "incomplete":
        details = response.incomplete_details
        result.finish_reason = getattr(details, "reason", None) or "incomplete"
    else:
        result.finish_reason = "tool_calls" if result.tool_calls else "stop"
