"""Our events as AG-UI events, built with the ``ag-ui-protocol`` package's models.

One :class:`EventMapper` follows one AG-UI run: it remembers which text messages are
open so that ``message.delta`` becomes ``TEXT_MESSAGE_START`` once and then
``TEXT_MESSAGE_CONTENT``. ``done`` turns true on the event that ends the AG-UI run:
``RUN_FINISHED`` (success, cancelled, or an interrupt when the agent asks for input)
or ``RUN_ERROR``. See docs/agui.rst for the table.
"""

from __future__ import annotations

import json
from typing import Any

from ag_ui.core import (
    BaseEvent,
    CustomEvent,
    Interrupt,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunFinishedInterruptOutcome,
    RunFinishedSuccessOutcome,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)

__all__ = ["INPUT_REQUIRED", "EventMapper", "interrupt_id", "parse_interrupt_id"]

#: The AG-UI interrupt reason for ``ctx.request_input()``.
INPUT_REQUIRED = "input_required"

#: Our events that AG-UI says in its own way, or that only the runtime needs.
_SILENT = {"run.queued", "run.started", "run.waiting"}


def interrupt_id(run_id: str, seq: int) -> str:
    """The AG-UI interrupt id of the input request at ``seq`` in run ``run_id``."""
    return f"{run_id}:{seq}"


def parse_interrupt_id(value: str) -> tuple[str, int] | None:
    run_id, _, seq = value.rpartition(":")
    if not run_id or not seq.isdigit():
        return None
    return run_id, int(seq)


class EventMapper:
    """Maps one run's event frames (``Event.to_frame()``) to AG-UI events."""

    def __init__(self, thread_id: str, run_id: str, our_run_id: str) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self.our_run_id = our_run_id
        self.open_messages: set[str] = set()
        self.done = False

    def map(self, frame: dict[str, Any]) -> list[BaseEvent]:
        """The AG-UI events for one of our event frames (none for another run's events)."""
        if self.done:
            return []
        run = frame.get("run")
        name: str = frame["event"]
        if run is not None and run != self.our_run_id:
            return []
        if run is None and not name.startswith("client."):
            return []
        data = frame.get("data") or {}
        handler = getattr(self, "_" + name.replace(".", "_"), None)
        if handler is not None:
            events: list[BaseEvent] = handler(data, frame)
            return events
        if name in _SILENT:
            return []
        # No AG-UI equivalent: a CUSTOM event under our name, so nothing is hidden.
        return [CustomEvent(name=name, value=data)]

    # -- text ------------------------------------------------------------------------

    def _start(self, message_id: str) -> list[BaseEvent]:
        if message_id in self.open_messages:
            return []
        self.open_messages.add(message_id)
        return [TextMessageStartEvent(message_id=message_id, role="assistant")]

    def _message_delta(self, data: dict[str, Any], frame: dict[str, Any]) -> list[BaseEvent]:
        message_id = str(data.get("message_id") or f"{self.our_run_id}-{frame['seq']}")
        events = self._start(message_id)
        text = str(data.get("text") or "")
        if text:  # AG-UI refuses empty deltas
            events.append(TextMessageContentEvent(message_id=message_id, delta=text))
        return events

    def _message_completed(self, data: dict[str, Any], frame: dict[str, Any]) -> list[BaseEvent]:
        message_id = str(data.get("message_id") or f"{self.our_run_id}-{frame['seq']}")
        events: list[BaseEvent] = []
        if message_id not in self.open_messages:
            # Published whole (or empty), without deltas.
            events += self._start(message_id)
            text = str(data.get("text") or "")
            if text:
                events.append(TextMessageContentEvent(message_id=message_id, delta=text))
        self.open_messages.discard(message_id)
        events.append(TextMessageEndEvent(message_id=message_id))
        return events

    def _message_aborted(self, data: dict[str, Any], frame: dict[str, Any]) -> list[BaseEvent]:
        events = self._message_completed({**data, "text": ""}, frame)
        return [*events, CustomEvent(name="message.aborted", value=data)]

    # -- tools -----------------------------------------------------------------------

    def _call_id(self, data: dict[str, Any], frame: dict[str, Any]) -> str:
        return str(data.get("call_id") or f"{self.our_run_id}-call-{frame['seq']}")

    def _tool_started(self, data: dict[str, Any], frame: dict[str, Any]) -> list[BaseEvent]:
        call_id = self._call_id(data, frame)
        events: list[BaseEvent] = [
            ToolCallStartEvent(tool_call_id=call_id, tool_call_name=str(data.get("name", "")))
        ]
        arguments = str(data.get("arguments") or "")
        if arguments:
            events.append(ToolCallArgsEvent(tool_call_id=call_id, delta=arguments))
        events.append(ToolCallEndEvent(tool_call_id=call_id))
        return events

    def _tool_completed(self, data: dict[str, Any], frame: dict[str, Any]) -> list[BaseEvent]:
        call_id = self._call_id(data, frame)
        result = data.get("result")
        content = result if isinstance(result, str) else json.dumps(result)
        return [
            ToolCallResultEvent(
                message_id=f"{call_id}-result", tool_call_id=call_id, content=content, role="tool"
            )
        ]

    # -- the end of the AG-UI run ----------------------------------------------------

    def _close_messages(self) -> list[BaseEvent]:
        events: list[BaseEvent] = [TextMessageEndEvent(message_id=m) for m in self.open_messages]
        self.open_messages.clear()
        return events

    def _end(self, event: BaseEvent) -> list[BaseEvent]:
        self.done = True
        return [*self._close_messages(), event]

    def _finished(self, outcome: Any, result: Any = None) -> RunFinishedEvent:
        return RunFinishedEvent(
            thread_id=self.thread_id, run_id=self.run_id, result=result, outcome=outcome
        )

    def _input_requested(self, data: dict[str, Any], frame: dict[str, Any]) -> list[BaseEvent]:
        prompt = data.get("prompt")
        interrupt = Interrupt(
            id=interrupt_id(self.our_run_id, frame["seq"]),
            reason=INPUT_REQUIRED,
            message=prompt if isinstance(prompt, str) else json.dumps(prompt),
            metadata={k: v for k, v in data.items() if k != "prompt"} or None,
        )
        return self._end(self._finished(RunFinishedInterruptOutcome(interrupts=[interrupt])))

    def _run_completed(self, data: dict[str, Any], frame: dict[str, Any]) -> list[BaseEvent]:
        return self._end(self._finished(RunFinishedSuccessOutcome(), data.get("output")))

    def _run_cancelled(self, data: dict[str, Any], frame: dict[str, Any]) -> list[BaseEvent]:
        return self._end(self._finished(RunFinishedCancelledOutcome(), data or None))

    def _run_interrupted(self, data: dict[str, Any], frame: dict[str, Any]) -> list[BaseEvent]:
        # Superseded by a newer run on the thread (DOUBLE_TEXTING="interrupt").
        return self._end(self._finished(RunFinishedCancelledOutcome(), data or None))

    def _run_failed(self, data: dict[str, Any], frame: dict[str, Any]) -> list[BaseEvent]:
        code = data.get("code")
        return self._end(
            RunErrorEvent(
                message=str(data.get("error") or "The run failed."),
                code=str(code) if code is not None else None,
            )
        )
