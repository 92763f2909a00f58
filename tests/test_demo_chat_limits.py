"""The example chat agent spends the server's model budget: the client neither picks any
model it likes nor gets an answer of unbounded length (issue 7, item 6)."""

from __future__ import annotations

import pytest

from agent_channels.models import Run, RunStatus
from agent_channels.runtime import start_run

from .helpers import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("inprocess_runtime")]


def completed(run: Run) -> Run:
    wait_for(lambda: Run.objects.get(pk=run.pk).status == RunStatus.COMPLETED)
    return Run.objects.get(pk=run.pk)


def test_a_client_model_outside_the_allowlist_is_ignored_and_tokens_are_capped(llm):
    run = completed(start_run("chat-limits", "chat", {"prompt": "hi", "model": "gpt-4.5-preview"}))
    assert run.output["text"] == "Hello from the test model."
    [request] = llm.requests
    assert request["model"] == "test-model"  # OPENAI_MODEL, not the client's choice
    assert request["max_tokens"] == 1024


def test_an_allowlisted_model_is_used(llm, monkeypatch):
    from demo import agents

    monkeypatch.setattr(agents, "ALLOWED_MODELS", frozenset({"small-model"}))
    monkeypatch.setattr(agents, "MAX_TOKENS", 64)
    completed(start_run("chat-allowed", "chat", {"prompt": "hi", "model": "small-model"}))
    [request] = llm.requests
    assert (request["model"], request["max_tokens"]) == ("small-model", 64)


def test_the_responses_api_gets_its_own_cap_name(settings):
    from demo.agents import chat_options

    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "OPENAI_API": "responses"}
    assert chat_options({"model": 123}) == {"model": None, "max_output_tokens": 1024}
    # Not even an unhashable value gets as far as the allowlist lookup.
    assert chat_options({"model": ["a"]})["model"] is None
