"""Agents for the tests (registered by name in tests/settings.py)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from agent_channels.runtime import Interrupted, RunContext


def echo(ctx: RunContext, input: Any) -> Any:
    ctx.emit("custom.echo", {"input": input})
    return input


def fail(ctx: RunContext, input: Any) -> Any:
    raise ValueError("the agent gave up")


def bad_output(ctx: RunContext, input: Any) -> Any:
    return {"not json": object()}


def chatty(ctx: RunContext, input: Any) -> Any:
    """One chat call with tools, then another that reuses the answer: two journaled turns."""
    from demo.agents import calculator

    first = ctx.chat([{"role": "user", "content": input["prompt"]}], tools=[calculator])
    ctx.emit("custom.between", {"text": first.text})
    if input.get("pause_ms"):
        ctx.sleep(input["pause_ms"] / 1000)
    second = ctx.chat([{"role": "user", "content": "and now?"}])
    return {"first": first.text, "second": second.text}


def turns(ctx: RunContext, input: Any) -> Any:
    """A chat of ``input["turns"]`` model calls, the first with a calculator tool call.

    Every prompt names ``input["tag"]`` and its turn, so a test can tell which journaled
    model step each request to the model server belongs to (tests/test_chaos_models.py).
    """
    from demo.agents import calculator

    tag = input["tag"]
    first = ctx.chat([{"role": "user", "content": f"{tag} turn 0: calculate 6*7"}],
                     tools=[calculator])
    answers = [first.text]
    for k in range(1, int(input.get("turns", 3))):
        answers.append(ctx.chat([{"role": "user", "content": f"{tag} turn {k}"}]).text)
    return {"answers": answers}


def unstorable_tool(ctx: RunContext, input: Any) -> Any:
    """A tool whose result no database stores (the test model always calls "calculator")."""
    from agent_channels.runtime import Tool

    overflow = Tool("calculator", lambda expression: {"value": float(expression)},
                    "Returns the number it is given.",
                    {"type": "object", "properties": {"expression": {"type": "string"}}})
    return ctx.chat([{"role": "user", "content": input["prompt"]}], tools=[overflow]).text


def big_tool(ctx: RunContext, input: Any) -> Any:
    """A tool whose result is as many bytes as the model asks for."""
    from agent_channels.runtime import Tool

    big = Tool("calculator", lambda expression: "x" * int(expression), "Returns x's.",
               {"type": "object", "properties": {"expression": {"type": "string"}}})
    return ctx.chat([{"role": "user", "content": input["prompt"]}], tools=[big]).text


def slow_tool(ctx: RunContext, input: Any) -> Any:
    """A tool that takes as many seconds as the model asks for; deadline ``input["limit"]``."""
    from agent_channels.runtime import Tool

    def sleep(expression: str) -> str:
        time.sleep(float(expression))
        return "slept"

    slow = Tool("calculator", sleep, "Sleeps.",
                {"type": "object", "properties": {"expression": {"type": "string"}}},
                time_limit=float(input.get("limit", 0.5)))
    return ctx.chat([{"role": "user", "content": input["prompt"]}], tools=[slow]).text


def runaway(ctx: RunContext, input: Any) -> Any:
    """Never looks at its control or its deadline again: only the worker's limit stops it."""
    ctx.emit("custom.running", {})
    time.sleep(3600)
    return None


def deaf(ctx: RunContext, input: Any) -> Any:
    """Busy for ``input["seconds"]`` without taking any interrupt."""
    ctx.emit("custom.running", {})
    time.sleep(float(input["seconds"]))
    return None


def stubborn(ctx: RunContext, input: Any) -> Any:
    """Swallows Celery's soft time limit too: only killing its process stops it."""
    ctx.emit("custom.running", {})
    while True:
        with contextlib.suppress(BaseException):  # the point: it will not stop
            time.sleep(3600)


def long_answer(ctx: RunContext, input: Any) -> Any:
    """Streams an answer of ``input["bytes"]`` bytes and returns it as the run's output."""
    size = int(input["bytes"])
    chunk = "x" * 4096 + "\n"
    with ctx.message() as message:
        written = 0
        while written < size:
            piece = chunk[: size - written]
            message.write(piece)
            written += len(piece)
    return {"text": message.text}


def listener(ctx: RunContext, input: Any) -> Any:
    """Waits; every interrupt is reported with the time this process saw it."""
    seen = 0
    deadline = time.monotonic() + float((input or {}).get("seconds", 30))
    while time.monotonic() < deadline:
        try:
            ctx.sleep(deadline - time.monotonic())
        except Interrupted as exc:
            seen += 1
            ctx.emit("custom.seen", {"seq": exc.seq, "data": exc.data, "at": time.time()})
    return {"seen": seen}


def steps(ctx: RunContext, input: Any) -> Any:
    a = ctx.step("a", lambda: {"n": 1})
    b = ctx.step("b", lambda: {"n": a["n"] + 1})
    return b


def poller(ctx: RunContext, input: Any) -> Any:
    """The baseline the runtime replaces: poll the log for interrupts every ``interval_ms``."""
    from agent_channels import publish
    from agent_channels.models import Event

    interval = float((input or {}).get("interval_ms", 100)) / 1000
    deadline = time.monotonic() + float((input or {}).get("seconds", 30))
    last = Event.objects.filter(channel__name=ctx.channel).order_by("-seq").values_list("seq", flat=True).first() or 0
    seen = 0
    while time.monotonic() < deadline:
        time.sleep(interval)
        for event in Event.objects.filter(channel__name=ctx.channel, seq__gt=last, name="client.interrupt").order_by("seq"):
            last = event.seq
            seen += 1
            # publish(), not ctx.emit(): the runtime would raise Interrupted in emit(), and
            # this agent stands for code that only polls (benchmarks/bench_control.py).
            publish(ctx.channel, "custom.seen", {"seq": event.seq, "at": time.time()})
        last = max(last, Event.objects.filter(channel__name=ctx.channel).order_by("-seq").values_list("seq", flat=True).first() or 0)
    return {"seen": seen}


def stamped(ctx: RunContext, input: Any) -> Any:
    """The demo's tokens (``tok<i>``), each with the wall-clock time it was written
    (``tok<i>@<unix time>``), so bench_scale measures write → watcher per token."""
    tokens, interval = int(input["tokens"]), input["interval_ms"] / 1000
    with ctx.message() as message:
        for i in range(tokens):
            if interval:
                ctx.sleep(interval)
            message.write(f"tok{i}@{time.time():.4f} ")
    return {"tokens": tokens}
