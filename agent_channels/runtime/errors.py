"""Exceptions agents see, and the ones the runtime uses to end or suspend a run."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AgentForbidden",
    "Cancelled",
    "Interrupted",
    "NonDeterministicReplay",
    "QuotaExceeded",
    "RunConflict",
    "RunError",
    "RunForbidden",
    "Superseded",
    "Suspended",
    "TimeLimitExceeded",
    "UnknownAgent",
]


class RunError(Exception):
    """Base class of the runtime's errors about how a run was started or configured."""


class UnknownAgent(RunError, LookupError):
    """No agent is registered under this name."""


class RunConflict(RunError):
    """Another run is active on the channel and the double-texting policy is ``reject``."""

    def __init__(self, message: str, active_run_id: Any = None) -> None:
        super().__init__(message)
        self.active_run_id = active_run_id


class RunForbidden(RunError, PermissionError):
    """The channel exists, and the access policy does not let the starting user send to it."""


class AgentForbidden(RunForbidden):
    """The access policy's ``can_run`` does not let the starting user run this agent here."""


class QuotaExceeded(RunError):
    """A quota refused the run; ``code`` says which (the HTTP API answers 429 with it).

    ``"too_many_runs"``: the user has ``MAX_ACTIVE_RUNS_PER_USER`` active runs.
    ``"too_many_queued"``: the channel has ``MAX_QUEUED_RUNS_PER_CHANNEL`` queued runs.
    """

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class NonDeterministicReplay(RunError):
    """A restarted run asked for a different step than the journal recorded at this index."""


class Interrupted(Exception):
    """A client interrupted the run. The agent may catch it and carry on.

    ``text`` is what the model had generated when it was stopped; ``data`` is what the
    client sent with the interrupt (new guidance, say).
    """

    def __init__(self, data: Any = None, text: str = "", seq: int | None = None) -> None:
        super().__init__("interrupted")
        self.data = data
        self.text = text
        self.seq = seq
        #: From ``ctx.chat``: the conversation so far, ending with the partial reply.
        self.messages: list[dict[str, Any]] | None = None


# The exceptions below end a run. They derive from BaseException so that an agent's
# ``except Exception`` cannot swallow them by accident.


class Cancelled(BaseException):
    """A client cancelled the run: it ends with status ``cancelled``."""

    def __init__(self, data: Any = None) -> None:
        super().__init__("cancelled")
        self.data = data


class Superseded(BaseException):
    """A newer run on the channel interrupted this one (double-texting ``interrupt``)."""

    def __init__(self, by: Any = None) -> None:
        super().__init__("superseded")
        self.by = by


class TimeLimitExceeded(BaseException):
    """The run passed its time limit: it ends with status ``failed``."""


class Suspended(BaseException):
    """The run waits for input; the worker is released and the run resumes later."""
