"""Python functions the model may call: ``@tool`` and the JSON schema sent to the model."""

from __future__ import annotations

import inspect
import threading
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

__all__ = ["Tool", "get_tool", "resolve_tools", "tool"]

F = TypeVar("F", bound=Callable[..., Any])

_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


@dataclass(frozen=True)
class Tool:
    """A Python function and the schema that describes it to the model."""

    name: str
    function: Callable[..., Any]
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    #: Seconds one call may take before the model gets a time-limit error instead of a
    #: result; None means ``AGENT_CHANNELS["TOOL_TIME_LIMIT"]``, 0 no limit of its own.
    time_limit: float | None = None

    def spec(self) -> dict[str, Any]:
        """The ``tools`` entry of a chat completions request."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def __call__(self, **kwargs: Any) -> Any:
        return self.function(**kwargs)


_tools: dict[str, Tool] = {}
_lock = threading.Lock()


def _schema_for(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _schema_for(args[0]) if len(args) == 1 else {}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(annotation))}
    json_type = _JSON_TYPES.get(origin or annotation)
    return {"type": json_type} if json_type else {}


def _parameters(fn: Callable[..., Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        properties[name] = _schema_for(hints.get(name, Any))
        if param.default is param.empty:
            required.append(name)
    return {"type": "object", "properties": properties, "required": required}


def tool(
    fn: F | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    time_limit: float | None = None,
) -> Any:
    """Register a function as a tool the model may call (``@tool`` or ``@tool(name=...)``).

    The parameter schema comes from the type hints, the description from the docstring.
    The function gets the model's arguments as keywords and returns any JSON value.
    ``time_limit``: seconds a call may take (default ``AGENT_CHANNELS["TOOL_TIME_LIMIT"]``).
    """

    def register(f: F) -> F:
        item = Tool(
            name=name or f.__name__,
            function=f,
            description=description or inspect.getdoc(f) or "",
            parameters=_parameters(f),
            time_limit=time_limit,
        )
        with _lock:
            _tools[item.name] = item
        return f

    return register(fn) if fn is not None else register


def get_tool(name: str) -> Tool:
    with _lock:
        found = _tools.get(name)
    if found is None:
        raise LookupError(f"No tool is registered as {name!r}.")
    return found


def resolve_tools(tools: typing.Iterable[str | Tool | Callable[..., Any]]) -> dict[str, Tool]:
    """Tools by name from names, :class:`Tool` objects or ``@tool`` functions."""
    resolved: dict[str, Tool] = {}
    for item in tools:
        if isinstance(item, Tool):
            found = item
        elif isinstance(item, str):
            found = get_tool(item)
        elif callable(item):
            with _lock:
                known = next((t for t in _tools.values() if t.function is item), None)
            found = known or Tool(
                item.__name__, item, inspect.getdoc(item) or "", _parameters(item)
            )
        else:
            raise TypeError(f"A tool must be a name, a Tool or a function, not {item!r}.")
        resolved[found.name] = found
    return resolved
