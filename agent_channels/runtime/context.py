"""What an agent function gets: ``fn(ctx, input)``.

Every side effect goes through the context so the run can be journaled, replayed after
a crash, and told to stop: ``emit``, ``message``, ``chat``, ``request_input``, ``step``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

from django.db.models import F
from django.utils import timezone

from agent_channels.channel.connections import retrying
from agent_channels.channel.log import EventDraft, append
from agent_channels.channel.publishing import MessageStream
from agent_channels.conf import get_config
from agent_channels.models import Event, Run
from agent_channels.runtime import calls, lifecycle, llm
from agent_channels.runtime.calls import ChatResult
from agent_channels.runtime.control import ControlMessage, Inbox
from agent_channels.runtime.errors import (
    Cancelled,
    Interrupted,
    Superseded,
    Suspended,
    TimeLimitExceeded,
)
from agent_channels.runtime.journal import Journal, StepRecord
from agent_channels.runtime.tools import Tool

__all__ = ["Message", "RunContext"]

logger = logging.getLogger(__name__)


class Message:
    """A streamed assistant message: ``with ctx.message() as m: m.write("...")``."""

    def __init__(self, ctx: RunContext, record: StepRecord) -> None:
        self._ctx = ctx
        self._record = record
        #: True when this message completed in an earlier attempt: writes are ignored.
        self.replayed = record.completed
        self._stream: MessageStream | None = None
        self.message_id = f"{ctx.run_id}-{record.index}"

    @property
    def text(self) -> str:
        if self._stream is not None:
            return self._stream.text
        return str((self._record.result or {}).get("text", ""))

    def __enter__(self) -> Message:
        if self.replayed:
            result = self._record.result or {}
            if result.get("interrupted"):
                raise Interrupted(result.get("data"), result.get("text", ""), result.get("seq"))
            return self
        self._ctx.check_control()
        self._ctx.journal.start(self._record)
        self._stream = MessageStream(
            self._ctx.channel,
            run=self._ctx.run_id,
            message_id=f"{self.message_id}-a{self._ctx.attempt}",
        )
        self.message_id = self._stream.message_id
        return self

    def write(self, delta: str) -> None:
        """Publish a piece of text (coalesced); raises when the run was interrupted or stopped."""
        if self.replayed:
            return
        assert self._stream is not None, "use the message as a context manager"
        self._ctx.check_control()
        self._stream.write(delta)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.replayed or self._stream is None:
            return
        if exc_type is None:
            self._stream.complete()
            self._ctx.journal.complete(
                self._record, {"text": self._stream.text, "message_id": self.message_id}
            )
        elif isinstance(exc, Interrupted):
            self._stream.abort("interrupted")
            exc.text = self._stream.text
            self._ctx.journal.complete(
                self._record,
                {
                    "text": exc.text,
                    "message_id": self.message_id,
                    "interrupted": True,
                    "data": exc.data,
                    "seq": exc.seq,
                },
            )
        else:
            reason = "cancelled" if isinstance(exc, Cancelled | Superseded) else exc_type.__name__
            self._stream.abort(reason)


class RunContext:
    """The run an agent executes in, and its way to talk to the channel."""

    def __init__(self, run: Run, channel: str, inbox: Inbox, attempt: int) -> None:
        self.run_id = run.pk
        self.channel = channel
        self.agent = run.agent
        self.input = run.input
        self.attempt = attempt
        self.inbox = inbox
        self.journal = Journal(run.pk, attempt)
        limit = run.time_limit or get_config()["RUN_TIME_LIMIT"]
        started = run.started_at or timezone.now()
        self.deadline = started.timestamp() + float(limit) if limit else None
        self.timed_out = False
        self.abort_handles: list[llm.AbortHandle] = []

    # -- control ---------------------------------------------------------------------

    def check_control(self) -> None:
        """Raise if the run must stop (cancel, time limit) or was interrupted.

        Agents that loop without calling the model or writing messages call this (or
        :meth:`sleep`) now and then so that cancel and interrupt take effect.
        """
        if self.inbox.cancel is not None:
            raise Cancelled(self.inbox.cancel.data)
        if self.inbox.superseded is not None:
            raise Superseded((self.inbox.superseded.data or {}).get("by"))
        if self.timed_out or (self.deadline is not None and time.time() > self.deadline):
            self.timed_out = True
            raise TimeLimitExceeded()
        if self.inbox.interrupts:
            message = self.inbox.interrupts.popleft()
            self.handled(message)
            raise Interrupted(message.data, seq=message.seq)

    def sleep(self, seconds: float) -> None:
        """Wait, waking at once for control messages (then raising like check_control)."""
        end = time.monotonic() + max(0.0, seconds)
        while True:
            self.check_control()
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            self.inbox.wakeup.clear()
            if self.inbox.pending:
                continue
            self.inbox.wakeup.wait(remaining)

    def handled(self, message: ControlMessage) -> None:
        retrying(
            lambda: Run.objects.filter(pk=self.run_id, control_seq__lt=message.seq).update(
                control_seq=message.seq
            )
        )
        logger.debug("agent_channels: run %s saw %s seq %s", self.run_id, message.kind, message.seq)

    def tick(self) -> None:
        """From the monitor thread: enforce the time limit even inside a model call, and
        tell clients which control messages the full inbox refused."""
        if self.deadline is not None and time.time() > self.deadline and not self.timed_out:
            self.timed_out = True
            self._abort_streams()
            self.inbox.wakeup.set()
        rejected = self.inbox.take_rejected()
        if rejected:
            append(self.channel, [self._rejection(message) for message in rejected])

    def _rejection(self, message: ControlMessage) -> EventDraft:
        data = {
            "code": "control_queue_full",
            "kind": message.kind,
            "seq": message.seq,
            "id": message.id,
            "message": f"The run has {self.inbox.limit} {message.kind}s it has not taken yet; "
            "this one was dropped. Send it again later.",
        }
        return EventDraft("control.rejected", data, self.run_id)

    def _abort_streams(self) -> None:
        for handle in list(self.abort_handles):
            handle.abort()

    # -- events and messages ---------------------------------------------------------

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Publish a custom event on the channel (once, even if the run is replayed)."""

        def publish(record: StepRecord) -> dict[str, Any]:
            event = append(self.channel, [EventDraft(name, data or {}, self.run_id)])[0]
            return {"seq": event.seq}

        self.journaled("emit", name, publish)

    def message(self) -> Message:
        """A streamed assistant message (``message.delta`` … ``message.completed``)."""
        return Message(self, self.journal.next("message"))

    stream = message

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` once: its JSON result is journaled and returned on replay."""

        def call(record: StepRecord) -> Any:
            result = fn()
            json.dumps(result)
            return result

        return self.journaled("step", name, call)

    def journaled(
        self,
        kind: str,
        name: str,
        body: Callable[[StepRecord], Any],
        also: Callable[[Any], None] | None = None,
    ) -> Any:
        """Run ``body`` as the run's next step, or return its recorded result on replay.

        ``body`` returns the JSON result to journal; ``also(result)`` runs in the same
        transaction as the journal write (usage counters, say).
        """
        record = self.journal.next(kind, name)
        if record.completed:
            return record.result
        self.check_control()
        # A step an earlier attempt started keeps the state it left (a background model
        # call's response id, say) for ``body`` to take over.
        self.journal.start(record, record.result)
        result = body(record)
        self.journal.complete(record, result, also=None if also is None else lambda: also(result))
        return result

    # -- the model ------------------------------------------------------------------

    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Iterable[str | Tool | Callable[..., Any]] = (),
        model: str | None = None,
        max_rounds: int | None = None,
        api: str | None = None,
        background: bool | None = None,
        **params: Any,
    ) -> ChatResult:
        """Stream a chat completion into the channel, running tool calls until the model
        answers. Raises :class:`Interrupted` (with ``messages`` so far) on interrupt.

        ``api`` (``"chat_completions"`` or ``"responses"``) and ``background`` override
        the agent's ``@agent(api=..., background=...)`` and the ``OPENAI_API`` and
        ``OPENAI_BACKGROUND`` settings for this call."""
        return calls.chat(
            self,
            messages,
            tools=tools,
            model=model,
            max_rounds=max_rounds,
            api=api,
            background=background,
            params=params,
        )

    def add_usage(self, model: str, usage: dict[str, Any]) -> None:
        """Count a model call's tokens on the run (inside the step's transaction)."""
        Run.objects.filter(pk=self.run_id).update(
            model=model,
            prompt_tokens=F("prompt_tokens") + int(usage.get("prompt_tokens", 0)),
            completion_tokens=F("completion_tokens") + int(usage.get("completion_tokens", 0)),
        )

    # -- human input -----------------------------------------------------------------

    def request_input(self, prompt: Any, **data: Any) -> Any:
        """Ask the channel's clients for input; returns what a client sends back.

        The run is suspended meanwhile: its worker is released, and the run resumes
        here when a client sends ``{"type": "input", "data": ...}``.
        """
        record = self.journal.next("input")
        if record.completed:
            return record.result["value"]
        if record.result is None:
            self.check_control()
            event = append(
                self.channel,
                [EventDraft("input.requested", {"prompt": prompt, **data}, self.run_id)],
            )[0]
            self.journal.start(record, {"after_seq": event.seq, "prompt": prompt})
        after = int(record.result["after_seq"])
        found = self._find_input(after)
        if found is None:
            if not lifecycle.set_waiting(self.run_id, {"prompt": prompt}):
                raise Cancelled() from None
            # The input may have arrived before the status said "waiting", when nobody
            # would have resumed the run: look once more before letting go.
            found = self._find_input(after)
            if found is None or not lifecycle.take_back(self.run_id):
                raise Suspended()
        value, seq = found
        self.inbox.drop_inputs(seq)
        append(
            self.channel, [EventDraft("input.received", {"value": value, "seq": seq}, self.run_id)]
        )
        self.journal.complete(record, {"value": value, "seq": seq})
        return value

    def _find_input(self, after: int) -> tuple[Any, int] | None:
        event = retrying(
            lambda: (
                Event.objects.filter(channel__name=self.channel, seq__gt=after, name="client.input")
                .order_by("seq")
                .first()
            )
        )
        if event is None:
            return None
        data = event.data if isinstance(event.data, dict) else {}
        return data.get("data"), event.seq
