"""The example agents. Installed apps' ``agents.py`` modules are imported at startup."""

from __future__ import annotations

import ast
import datetime as dt
import operator
from typing import Any

from agent_channels.runtime import Interrupted, RunContext, agent, tool

_OPERATORS: dict[type, Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        if isinstance(node.op, ast.Pow) and abs(_evaluate(node.right)) > 100:
            raise ValueError("exponent too large")
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))
    raise ValueError("only numbers and + - * / % ** are allowed")


@tool
def calculator(expression: str) -> float:
    """Evaluate an arithmetic expression such as "(2 + 3) * 7"."""
    # Parsed, never eval()'d: the expression comes from the model.
    return _evaluate(ast.parse(expression[:200], mode="eval"))


@tool
def current_time(timezone: str = "UTC") -> str:
    """The current date and time in ISO 8601 (UTC)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _int(value: Any, default: int, low: int, high: int) -> int:
    try:
        return max(low, min(high, int(value)))
    except (TypeError, ValueError):
        return default


@agent("demo")
def demo(ctx: RunContext, input: Any) -> dict[str, Any]:
    """Streams ``input.tokens`` deterministic tokens, one per ``input.interval_ms``; no model."""
    options = input if isinstance(input, dict) else {}
    tokens = _int(options.get("tokens"), 20, 0, 100_000)
    interval = _int(options.get("interval_ms"), 50, 0, 60_000) / 1000.0
    with ctx.message() as message:
        for i in range(tokens):
            if interval:
                ctx.sleep(interval)
            message.write(f"tok{i} ")
    return {"tokens": tokens, "chars": len(message.text)}


@agent("chat")
def chat(ctx: RunContext, input: Any) -> dict[str, Any]:
    """An OpenAI chat agent with a calculator and the current time.

    On interrupt it keeps the partial answer, adds the client's guidance as a user
    message and carries on.
    """
    options = input if isinstance(input, dict) else {"prompt": str(input)}
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant. Use tools for arithmetic."},
        {"role": "user", "content": str(options.get("prompt", ""))},
    ]
    for _turn in range(5):
        try:
            result = ctx.chat(messages, tools=[calculator, current_time], model=options.get("model"))
            return {"text": result.text}
        except Interrupted as exc:
            messages = list(exc.messages or messages)
            guidance = exc.data.get("text") if isinstance(exc.data, dict) else exc.data
            messages.append({"role": "user", "content": str(guidance or "Please continue.")})
    return {"text": "", "error": "interrupted too often"}


@agent("approval")
def approval(ctx: RunContext, input: Any) -> dict[str, Any]:
    """Asks the user to approve an action mid-run and continues with the answer."""
    options = input if isinstance(input, dict) else {}
    action = str(options.get("action", "deploy the release"))
    with ctx.message() as message:
        message.write(f"I am about to {action}.")
    answer = ctx.request_input(f"May I {action}? (yes/no)", choices=["yes", "no"])
    approved = str(answer.get("text") if isinstance(answer, dict) else answer).strip().lower()
    approved_bool = approved in ("yes", "y", "ok", "approve", "approved")
    with ctx.message() as message:
        message.write("Done: " + action + "." if approved_bool else "Understood, I will not.")
    return {"approved": approved_bool, "answer": answer}
