"""Model and tool calls: what :meth:`RunContext.chat` does, one journaled step per call.

A model call streams its text into a message on the channel and can be cut short by
an interrupt, a cancel or the time limit (the HTTP stream is shut, so no more tokens
are paid for); a tool call runs a registered tool and tells the channel about it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent_channels.channel.log import EventDraft, InvalidEvent, append, check_storable
from agent_channels.channel.publishing import MessageStream
from agent_channels.conf import get_config
from agent_channels.runtime import llm
from agent_channels.runtime.control import ControlMessage
from agent_channels.runtime.errors import Cancelled, Interrupted
from agent_channels.runtime.journal import StepRecord
from agent_channels.runtime.tools import Tool, resolve_tools

if TYPE_CHECKING:
    from agent_channels.runtime.context import RunContext

__all__ = ["ChatResult", "chat", "model_call", "tool_call"]


@dataclass
class ChatResult:
    """What :meth:`RunContext.chat` returns."""

    text: str
    #: The conversation including the assistant's replies and tool results.
    messages: list[dict[str, Any]]
    prompt_tokens: int = 0
    completion_tokens: int = 0


def chat(
    ctx: RunContext,
    messages: Sequence[dict[str, Any]],
    *,
    tools: Iterable[str | Tool | Callable[..., Any]] = (),
    model: str | None = None,
    max_rounds: int | None = None,
    params: dict[str, Any] | None = None,
) -> ChatResult:
    """Call the model, run the tools it asks for, and call it again until it answers."""
    tool_map = resolve_tools(tools)
    specs = [t.spec() for t in tool_map.values()]
    model = model or llm.default_model()
    history = [dict(m) for m in messages]
    prompt = completion = 0
    rounds = max_rounds or int(get_config()["MAX_TOOL_ROUNDS"])
    for _round in range(rounds):
        result = model_call(ctx, history, model, specs, params or {})
        prompt += int(result.get("prompt_tokens", 0))
        completion += int(result.get("completion_tokens", 0))
        assistant: dict[str, Any] = {"role": "assistant", "content": result["content"]}
        if result["tool_calls"]:
            assistant["tool_calls"] = result["tool_calls"]
        history.append(assistant)
        if result.get("interrupted"):
            exc = Interrupted(result.get("data"), result["content"], result.get("seq"))
            exc.messages = history
            raise exc
        if not result["tool_calls"]:
            return ChatResult(result["content"], history, prompt, completion)
        for call in result["tool_calls"]:
            output = tool_call(ctx, call, tool_map)
            history.append(
                {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(output)}
            )
    raise RuntimeError(f"The model still asked for tools after {rounds} rounds.")


def model_call(
    ctx: RunContext,
    history: list[dict[str, Any]],
    model: str,
    specs: list[dict[str, Any]],
    params: dict[str, Any],
) -> dict[str, Any]:
    """One streamed model call as a journaled step; returns its journaled result."""

    def call(record: StepRecord) -> dict[str, Any]:
        return _stream_model(ctx, record, history, model, specs, params)

    result: dict[str, Any] = ctx.journaled(
        "model", model, call, also=lambda data: ctx.add_usage(model, data)
    )
    return dict(result)


def _stream_model(
    ctx: RunContext,
    record: StepRecord,
    history: list[dict[str, Any]],
    model: str,
    specs: list[dict[str, Any]],
    params: dict[str, Any],
) -> dict[str, Any]:
    # Opened on the first text: a reply that only asks for tools is not a message.
    streams: list[MessageStream] = []

    def open_stream() -> MessageStream:
        if not streams:
            streams.append(
                MessageStream(
                    ctx.channel,
                    run=ctx.run_id,
                    message_id=f"{ctx.run_id}-{record.index}-a{ctx.attempt}",
                )
            )
        return streams[0]

    def close(reason: str | None) -> None:
        if reason is None:
            open_stream()  # an empty answer is still a (completed, empty) message
        if not streams or streams[0].closed:
            return
        if reason is None:
            streams[0].complete()
        else:
            streams[0].abort(reason)

    handle = llm.AbortHandle()

    def on_control(message: ControlMessage) -> None:
        if message.kind in ("interrupt", "cancel", "supersede"):
            handle.abort()

    remove = ctx.inbox.on_message(on_control)
    ctx.abort_handles.append(handle)
    try:
        if ctx.inbox.pending:
            handle.abort()
        result = llm.stream_chat(
            messages=history,
            model=model,
            tools=specs,
            params=params,
            on_text=lambda delta: open_stream().write(delta),
            handle=handle,
        )
    except llm.StreamAborted as aborted:
        partial: llm.ModelResult = aborted.args[0]
        reason = "interrupted" if ctx.inbox.interrupts else "cancelled"
        if ctx.timed_out:
            reason = "time_limit"
        close(reason)
        if reason != "interrupted":
            ctx.check_control()  # raises Cancelled / Superseded / TimeLimitExceeded
            raise Cancelled() from None
        message = ctx.inbox.interrupts.popleft()
        ctx.handled(message)
        data = partial.to_json()
        data.update(interrupted=True, data=message.data, seq=message.seq, tool_calls=[])
        return data
    except BaseException:
        close("error")
        raise
    finally:
        remove()
        ctx.abort_handles.remove(handle)
    if result.content or not result.tool_calls:
        close(None)
    return result.to_json()


def tool_call(ctx: RunContext, call: dict[str, Any], tool_map: dict[str, Tool]) -> Any:
    """One tool call as a journaled step; returns the tool's output (or its error)."""
    name = str(call.get("function", {}).get("name", ""))
    raw = str(call.get("function", {}).get("arguments", ""))

    def run_tool(record: StepRecord) -> dict[str, Any]:
        base = {"name": name, "call_id": call.get("id"), "arguments": raw}
        append(ctx.channel, [EventDraft("tool.started", base, ctx.run_id)])
        try:
            arguments = llm.parse_arguments(raw)
            found = tool_map.get(name)
            if found is None:
                raise LookupError(f"The model asked for an unknown tool {name!r}.")
            output: Any = found(**arguments)
            # The result goes into an event and the journal: one the database cannot store
            # (inf, NaN, NUL, an object) would fail the whole run, so the model gets an error.
            check_storable(output)
            ok = True
        except InvalidEvent as exc:
            output = {"error": f"The tool's result cannot be stored: {exc}"}
            ok = False
        except Exception as exc:
            # The model gets the error as the tool's result and may recover from it.
            output = {"error": f"{type(exc).__name__}: {exc}"}
            ok = False
        append(
            ctx.channel,
            [EventDraft("tool.completed", {**base, "result": output, "ok": ok}, ctx.run_id)],
        )
        return {"result": output, "ok": ok}

    return ctx.journaled("tool", name, run_tool)["result"]
