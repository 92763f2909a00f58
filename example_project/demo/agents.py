"""The example agents. Installed apps' ``agents.py`` modules are imported at startup."""

from __future__ import annotations

import ast
import datetime as dt
import math
import operator
import os
from typing import Any

from agent_channels.conf import get_config
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


#: Every operand and result stays within 10**±100 digits' reach: the expression comes from
#: the model, and ``(((9**99)**99)**99)**99`` would otherwise build a 90-million-digit
#: integer while holding the GIL (freezing the web process under the in-process backend).
_MAX_DIGITS = 100
_MAX_MAGNITUDE = 10**_MAX_DIGITS


def _checked(value: Any) -> float:
    # bool is an int; complex comes from a negative base to a fractional power.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("the result is too large")
    if abs(value) > _MAX_MAGNITUDE:
        raise ValueError(f"numbers may have at most {_MAX_DIGITS} digits")
    return value


def _power(base: float, exponent: float) -> float:
    # Refused before computing: the result's size is known from the logarithm.
    if base != 0 and exponent * math.log10(abs(base)) > _MAX_DIGITS:
        raise ValueError(f"numbers may have at most {_MAX_DIGITS} digits")
    return _checked(operator.pow(base, exponent))


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        return _checked(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        return _checked(_OPERATORS[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _checked(_OPERATORS[type(node.op)](_evaluate(node.operand)))
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


#: Models a client may pick with ``{"model": ...}`` (comma-separated ``DEMO_CHAT_MODELS``);
#: anything else gets the configured model (``OPENAI_MODEL``). The client pays nothing:
#: the server's API key does, so the client must not choose the most expensive model.
ALLOWED_MODELS = frozenset(
    name.strip() for name in os.environ.get("DEMO_CHAT_MODELS", "").split(",") if name.strip()
)
#: Tokens one answer may take (``DEMO_CHAT_MAX_TOKENS``), whatever the client asks.
MAX_TOKENS = int(os.environ.get("DEMO_CHAT_MAX_TOKENS", "1024"))


def chat_options(options: dict[str, Any]) -> dict[str, Any]:
    """The model parameters of one chat call: an allowed model or the default, capped tokens."""
    model = options.get("model")
    # The Responses API names the cap differently from Chat Completions.
    cap = "max_output_tokens" if get_config()["OPENAI_API"] == "responses" else "max_tokens"
    allowed = isinstance(model, str) and model in ALLOWED_MODELS
    return {"model": model if allowed else None, cap: MAX_TOKENS}


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
            result = ctx.chat(messages, tools=[calculator, current_time], **chat_options(options))
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
