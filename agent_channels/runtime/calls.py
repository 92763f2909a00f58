"""Model and tool calls: what :meth:`RunContext.chat` does, one journaled step per call.

A model call streams its text into a message on the channel and can be cut short by
an interrupt, a cancel or the time limit (the HTTP stream is shut, so no more tokens
are paid for); a tool call runs a registered tool and tells the channel about it.

Model calls go to the chat completions API (:mod:`~agent_channels.runtime.llm`) or to
OpenAI's Responses API (:mod:`~agent_channels.runtime.responses`, see
:class:`ResponsesCall`), chosen per call, per agent or by setting.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent_channels.channel.log import EventDraft, InvalidEvent, append, check_storable
from agent_channels.channel.publishing import MessageStream
from agent_channels.conf import get_config
from agent_channels.models import Event, Step, StepStatus
from agent_channels.runtime import llm, responses
from agent_channels.runtime.control import ControlMessage
from agent_channels.runtime.deadlines import Abandoned, ToolTimeout, call_with_deadline
from agent_channels.runtime.errors import Cancelled, Interrupted
from agent_channels.runtime.journal import StepRecord
from agent_channels.runtime.registry import agent_options
from agent_channels.runtime.tools import Tool, resolve_tools

if TYPE_CHECKING:
    from agent_channels.runtime.context import RunContext

__all__ = [
    "API_CHOICES",
    "ChatResult",
    "ResponsesCall",
    "chat",
    "model_call",
    "release_background_calls",
    "resumable_message_ids",
    "tool_call",
]

logger = logging.getLogger(__name__)

#: Values of the ``OPENAI_API`` setting and of ``api=`` on ``@agent`` and ``ctx.chat()``.
API_CHOICES = ("chat_completions", "responses")


@dataclass
class ChatResult:
    """What :meth:`RunContext.chat` returns."""

    text: str
    #: The conversation including the assistant's replies and tool results.
    messages: list[dict[str, Any]]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Reasoning summaries the model gave (Responses API, with ``reasoning={"summary": ...}``).
    reasoning: str = ""


def choose_api(ctx: RunContext, api: str | None, background: bool | None) -> tuple[str, bool]:
    """The call's model API and background mode: the call's choice, else the agent's
    (``@agent(api=..., background=...)``), else the settings."""
    config = get_config()
    options = agent_options(ctx.agent)
    chosen = str(api or options.get("api") or config["OPENAI_API"])
    if chosen not in API_CHOICES:
        raise ValueError(
            f"api={chosen!r} is not a model API: use one of "
            f"{', '.join(repr(a) for a in API_CHOICES)}."
        )
    if background is None:
        background = options.get("background")
    if background is None:
        background = bool(config["OPENAI_BACKGROUND"])
    return chosen, bool(background) and chosen == "responses"


def chat(
    ctx: RunContext,
    messages: Sequence[dict[str, Any]],
    *,
    tools: Iterable[str | Tool | Callable[..., Any]] = (),
    model: str | None = None,
    max_rounds: int | None = None,
    api: str | None = None,
    background: bool | None = None,
    params: dict[str, Any] | None = None,
) -> ChatResult:
    """Call the model, run the tools it asks for, and call it again until it answers."""
    api, background = choose_api(ctx, api, background)
    tool_map = resolve_tools(tools)
    specs = [t.spec() for t in tool_map.values()]
    model = model or llm.default_model()
    history = [dict(m) for m in messages]
    prompt = completion = 0
    reasoning: list[str] = []
    rounds = max_rounds or int(get_config()["MAX_TOOL_ROUNDS"])
    for _round in range(rounds):
        result = model_call(ctx, history, model, specs, params or {}, api, background)
        prompt += int(result.get("prompt_tokens", 0))
        completion += int(result.get("completion_tokens", 0))
        if result.get("reasoning"):
            reasoning.append(str(result["reasoning"]))
        assistant: dict[str, Any] = {"role": "assistant", "content": result["content"]}
        if result["tool_calls"]:
            assistant["tool_calls"] = result["tool_calls"]
        history.append(assistant)
        if result.get("interrupted"):
            exc = Interrupted(result.get("data"), result["content"], result.get("seq"))
            exc.messages = history
            raise exc
        if not result["tool_calls"]:
            text = result["content"]
            return ChatResult(text, history, prompt, completion, "\n\n".join(reasoning))
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
    api: str = "chat_completions",
    background: bool = False,
) -> dict[str, Any]:
    """One streamed model call as a journaled step; returns its journaled result."""

    def call(record: StepRecord) -> dict[str, Any]:
        # A background response an earlier attempt started is taken over whatever the
        # API chosen now: asking again would pay for it twice.
        if api == "responses" or _taken_over(record):
            return ResponsesCall(ctx, record, model, background).run(history, specs, params)
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


# -- the Responses API -----------------------------------------------------------------
#
# In background mode a model call's journal row (a started step) holds what a later
# attempt needs to take the call over: {"response_id", "seq", "chars", "message_id"} —
# the last event applied, how much answer text it amounts to, and the message the text
# streams into. It is written when the response id is first known and then at most once
# per SAVE_SECONDS (never per token). A recovered run re-attaches with
# starting_after=seq and keeps writing the *same* message: the text the dead worker had
# already published is read back from the channel and the re-sent part of it is
# skipped, so the deltas still concatenate to the final text however stale the row was.

#: Times a background call re-attaches after its HTTP stream broke (not a timeout).
RECONNECTS = 3

#: A background call's journal row is rewritten at most this often (and never more often
#: than the coalescing window): a resume then re-reads at most this much of the stream.
SAVE_SECONDS = 1.0

_MESSAGE_EVENTS = ("message.delta", "message.completed", "message.aborted")


def published_text(run_id: Any, message_id: str) -> tuple[str, bool]:
    """The text of ``message_id`` on the channel so far, and whether it was closed."""
    rows = Event.objects.filter(
        run_id=run_id, name__in=_MESSAGE_EVENTS, data__message_id=message_id
    ).order_by("seq")
    parts: list[str] = []
    closed = False
    for name, data in rows.values_list("name", "data"):
        if name == "message.delta":
            parts.append(str((data or {}).get("text", "")))
        else:
            closed = True
    return "".join(parts), closed


def _background_states(run_id: Any) -> list[dict[str, Any]]:
    rows = Step.objects.filter(run_id=run_id, kind="model", status=StepStatus.STARTED)
    return [
        state
        for state in rows.values_list("result", flat=True)
        if isinstance(state, dict) and state.get("background") and state.get("response_id")
    ]


def _taken_over(record: StepRecord) -> bool:
    """True when an earlier attempt left this step a background response to take over."""
    state = record.result
    return (
        not record.completed
        and isinstance(state, dict)
        and bool(state.get("background"))
        and bool(state.get("response_id"))
    )


def resumable_message_ids(run_id: Any) -> set[str]:
    """Messages of started background calls: a recovered run continues them, not aborts."""
    return {str(state.get("message_id")) for state in _background_states(run_id)}


def release_background_calls(run_id: Any, channel: str, reason: str) -> int:
    """Cancel the background responses of a run that ends without taking them over.

    That happens when a restarted run is cancelled (or fails, or moves on after an
    interrupt) before it reaches the model call again. Their messages are closed as
    aborted with the text published so far. Returns how many responses were released.
    """
    states = _background_states(run_id)
    for state in states:
        responses.cancel(str(state["response_id"]))
        _abort_published(run_id, channel, str(state.get("message_id", "")), reason)
    return len(states)


def _abort_published(run_id: Any, channel: str, message_id: str, reason: str) -> None:
    text, closed = published_text(run_id, message_id)
    if text and not closed:
        data = {"message_id": message_id, "text": text, "reason": reason}
        append(channel, [EventDraft("message.aborted", data, run_id)])


class ResponsesCall:
    """One model call on the Responses API, maybe taking over an earlier attempt's.

    See the comment at the top of this section for what background mode journals.
    """

    message_id: str
    state: dict[str, Any]
    stream: MessageStream | None

    def __init__(self, ctx: RunContext, record: StepRecord, model: str, background: bool) -> None:
        self.ctx = ctx
        self.record = record
        self.model = model
        #: What an earlier attempt journaled, when this call takes a background response over.
        self.taken_over: dict[str, Any] | None = record.result if _taken_over(record) else None
        self.chosen_background = background
        # A taken-over response is a background one, whatever this attempt would choose.
        self.background = background or self.taken_over is not None
        self._fresh()
        if self.taken_over is not None:
            self.message_id = str(self.taken_over.get("message_id") or self.message_id)
            self.state.update(self.taken_over)
        window = float(get_config()["COALESCE_WINDOW_MS"]) / 1000.0
        self.save_every = max(window, SAVE_SECONDS)

    def _fresh(self) -> None:
        ctx = self.ctx
        self.message_id = f"{ctx.run_id}-{self.record.index}-a{ctx.attempt}"
        self.state = {
            "api": "responses",
            "background": self.background,
            "message_id": self.message_id,
        }
        self.stream = None
        self.prefix = ""  # text of this message an earlier attempt published
        self.skip = 0  # characters of re-sent text still to drop
        self.total = 0  # answer characters up to the last applied event
        self.closed_before = False
        self.next_save = 0.0
        self.handle = llm.AbortHandle()
        self.response_id: str | None = None  # as far as this attempt got
        self.last_seq: int | None = None
        self.reconnects = 0

    # -- the call ----------------------------------------------------------------------

    def run(
        self, history: list[dict[str, Any]], specs: list[dict[str, Any]], params: dict[str, Any]
    ) -> dict[str, Any]:
        """The call's result for the journal (:meth:`RunContext.journaled` records it)."""
        if self.taken_over is not None:
            try:
                return self._resume()
            except responses.ResponseGone as exc:
                self._fall_back(exc)
        return self._create(history, specs, params)

    def _create(
        self, history: list[dict[str, Any]], specs: list[dict[str, Any]], params: dict[str, Any]
    ) -> dict[str, Any]:
        return self._stream(
            lambda: responses.create(
                input=responses.to_input(history),
                model=self.model,
                tools=responses.to_tools(specs),
                params=params,
                on_text=self._on_text,
                handle=self.handle,
                background=self.background,
                on_event=self._on_event,
            )
        )

    def _resume(self) -> dict[str, Any]:
        assert self.taken_over is not None
        response_id = str(self.taken_over["response_id"])
        published, self.closed_before = published_text(self.ctx.run_id, self.message_id)
        seq = self.taken_over.get("seq")
        chars = int(self.taken_over.get("chars") or 0)
        if seq is not None and len(published) >= chars:
            after: int | None = int(seq)
            self.total = chars
        else:
            # The row ran ahead of what reached the channel: read the stream from the start.
            after, self.total = None, 0
        self.prefix = published
        self.skip = len(published) - self.total
        self.response_id, self.last_seq = response_id, after
        logger.info(
            "agent_channels: run %s takes over response %s after event %s",
            self.ctx.run_id,
            response_id,
            after,
        )
        return self._stream(
            lambda: responses.resume(
                response_id,
                after,
                on_text=self._on_text,
                handle=self.handle,
                on_event=self._on_event,
            )
        )

    def _fall_back(self, exc: responses.ResponseGone) -> None:
        """The stored response is gone: close its message and say so, then start afresh."""
        assert self.taken_over is not None
        ctx = self.ctx
        old_message = self.message_id
        if not self.closed_before and (self.prefix or self.stream is not None):
            self._close("response_lost")
        data = {
            "response_id": self.taken_over.get("response_id"),
            "message_id": old_message,
            "reason": str(exc),
        }
        append(ctx.channel, [EventDraft("model.fallback", data, ctx.run_id)])
        logger.warning("agent_channels: run %s: %s; asking the model again", ctx.run_id, exc)
        self.taken_over = None
        self.background = self.chosen_background
        self._fresh()
        self.ctx.journal.start(self.record, None)  # no response to take over any more

    def _stream(self, call: Callable[[], responses.ResponseResult]) -> dict[str, Any]:
        ctx = self.ctx
        handle = self.handle
        ctx.abort_handles.append(handle)

        def on_control(message: ControlMessage) -> None:
            if message.kind in ("interrupt", "cancel", "supersede"):
                handle.abort()

        remove = ctx.inbox.on_message(on_control)
        try:
            if ctx.inbox.pending:
                handle.abort()
            result = self._follow(call)
        except llm.StreamAborted as aborted:
            partial: responses.ResponseResult = aborted.args[0]
            self._cancel(partial.response_id)
            reason = "interrupted" if ctx.inbox.interrupts else "cancelled"
            if ctx.timed_out:
                reason = "time_limit"
            self._close(reason)
            if reason != "interrupted":
                ctx.check_control()  # raises Cancelled / Superseded / TimeLimitExceeded
                raise Cancelled() from None
            message = ctx.inbox.interrupts.popleft()
            ctx.handled(message)
            data = partial.to_json()
            data.update(
                content=self.text,
                interrupted=True,
                data=message.data,
                seq=message.seq,
                tool_calls=[],
            )
            return data
        except responses.ResponseGone:
            if self.stream is not None:
                self._close("response_lost")
            raise
        except BaseException:
            self._cancel(self.response_id)
            self._close("error")
            raise
        finally:
            remove()
            ctx.abort_handles.remove(handle)
        if result.reasoning:
            # Summaries come whole with the final response, so one event, not deltas.
            data = {"message_id": self.message_id, "text": result.reasoning}
            append(ctx.channel, [EventDraft("model.reasoning", data, ctx.run_id)])
        if self.text or not result.tool_calls:
            self._close(None)
        data = result.to_json()
        data["content"] = self.text
        return data

    def _follow(self, call: Callable[[], responses.ResponseResult]) -> responses.ResponseResult:
        """``call()``; when the connection breaks, re-attach to a background response."""
        import openai

        while True:
            try:
                return call()
            except openai.APITimeoutError:
                raise  # MODEL_TIMEOUT without a byte: the call fails, as documented
            except openai.APIConnectionError as exc:
                response_id, after = self.response_id, self.last_seq
                if not self.background or response_id is None or self.handle.aborted:
                    raise
                if self.reconnects >= RECONNECTS:
                    raise
                self.reconnects += 1
                logger.warning(
                    "agent_channels: run %s lost response %s's stream (%s); re-attaching "
                    "after event %s",
                    self.ctx.run_id,
                    response_id,
                    exc,
                    after,
                )

                def call(response_id: str = response_id, after: int | None = after) -> Any:
                    return responses.resume(
                        response_id,
                        after,
                        on_text=self._on_text,
                        handle=self.handle,
                        on_event=self._on_event,
                    )

    def _cancel(self, response_id: Any) -> None:
        # Closing the stream does not stop a background response: only a cancel does.
        if self.background and response_id:
            responses.cancel(str(response_id))

    # -- the message -------------------------------------------------------------------

    @property
    def text(self) -> str:
        """The whole answer so far, including what an earlier attempt published."""
        return self.prefix + (self.stream.text if self.stream is not None else "")

    def _open(self) -> MessageStream:
        if self.stream is None:
            self.stream = MessageStream(
                self.ctx.channel, run=self.ctx.run_id, message_id=self.message_id
            )
        return self.stream

    def _close(self, reason: str | None) -> None:
        if self.closed_before:
            return
        if self.stream is None and reason is not None and not self.prefix:
            return  # nothing was published: there is no message to abort
        stream = self._open()  # an empty answer is still a (completed, empty) message
        if stream.closed:
            return
        # A taken-over message's events carry its whole text, not only this attempt's.
        extra = {"text": self.text} if self.prefix else {}
        if reason is None:
            stream.complete(**extra)
        else:
            stream.abort(reason, **extra)

    def _on_text(self, delta: str) -> None:
        self.total += len(delta)
        if self.skip:
            dropped = min(self.skip, len(delta))
            self.skip -= dropped
            delta = delta[dropped:]
        if delta and not self.closed_before:
            self._open().write(delta)

    def _on_event(self, result: responses.ResponseResult) -> None:
        self.response_id = result.response_id or self.response_id
        self.last_seq = result.sequence_number
        if not self.background or result.sequence_number is None:
            return
        now = time.monotonic()
        first = result.response_id is not None and "response_id" not in self.state
        if not first and now < self.next_save:
            return
        if self.stream is not None and not self.stream.closed:
            self.stream.flush()  # what the row promises must be on the channel first
        self.state.update(
            response_id=result.response_id, seq=result.sequence_number, chars=self.total
        )
        self.ctx.journal.start(self.record, dict(self.state))
        self.next_save = now + self.save_every


def tool_time_limit(found: Tool) -> float | None:
    """The tool's own limit, else ``TOOL_TIME_LIMIT``; None when neither sets one."""
    limit = found.time_limit
    if limit is None:
        limit = get_config()["TOOL_TIME_LIMIT"]
    return float(limit) if limit else None


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
            output: Any = call_with_deadline(
                found.function,
                arguments,
                tool_time_limit(found),
                # A cancel or the run's own time limit does not wait for the tool.
                lambda: ctx.inbox.stopping or ctx.timed_out,
            )
            # The result goes into an event and the journal: one the database cannot store
            # (inf, NaN, NUL, an object) would fail the whole run, so the model gets an error.
            check_storable(output)
            ok = True
        except InvalidEvent as exc:
            output = {"error": f"The tool's result cannot be stored: {exc}"}
            ok = False
        except ToolTimeout as exc:
            logger.warning("agent_channels: run %s: tool %r overran; abandoned", ctx.run_id, name)
            output = {"error": str(exc), "code": "tool_time_limit"}
            ok = False
        except Abandoned:
            ctx.check_control()  # raises Cancelled / Superseded / TimeLimitExceeded
            raise Cancelled() from None
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
