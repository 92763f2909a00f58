"""Background Responses API calls on real Celery workers that die: nothing paid twice.

The workers use the Responses API through the settings (``OPENAI_API`` and
``OPENAI_BACKGROUND``, from ``AGCH_OPENAI_*`` in tests/settings.py); the loopback model
server counts the responses created, the streams resumed and every text token it
generated, so a token generated twice would show.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest
from django.conf import settings

from agent_channels.models import Event, Run, RunStatus
from agent_channels.runtime import start_run

from .helpers import wait_for
from .procs import CeleryWorker
from .test_celery_runs import daphne, ended, finished, follow, names, queue, session_cookie

__all__ = ["daphne", "queue", "session_cookie"]  # fixtures, imported for pytest

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.redis,
    pytest.mark.integration,
    pytest.mark.skipif(settings.DB_KIND != "postgres", reason="runs on PostgreSQL (AGCH_DB=postgres)"),
]

ANSWER = 400  # tokens of the answer the worker dies in
API_ENV = {
    "chat_completions": {"AGCH_OPENAI_API": "chat_completions"},
    "responses": {"AGCH_OPENAI_API": "responses", "AGCH_OPENAI_BACKGROUND": "1"},
}


@pytest.fixture
def workers(queue):
    started: list[CeleryWorker] = []

    def start(api: str) -> CeleryWorker:
        worker = CeleryWorker(queue, **API_ENV[api])
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def following(daphne, cookie: str, channel: str) -> tuple[threading.Thread, dict]:
    """A WebSocket client on ``channel`` from seq 0 until the run ends, in a thread."""
    box: dict = {}

    def target() -> None:
        box["frames"] = asyncio.run(follow(daphne, cookie, channel, ended, timeout=120))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def words_streamed(channel: str) -> int:
    texts = Event.objects.filter(channel__name=channel, name="message.delta").values_list(
        "data__text", flat=True
    )
    return len(re.findall(r"\bw\d+ ", "".join(texts)))


@pytest.mark.parametrize("api", ["chat_completions", "responses"])
def test_a_worker_killed_mid_answer_costs_no_token_twice_in_background_mode(
    workers, daphne, session_cookie, llm, api
):
    channel = f"kill-{api}"
    llm.reply_tokens, llm.delay = ANSWER, 0.02
    first = workers(api)
    thread, box = following(daphne, session_cookie, channel)
    run = start_run(channel, "chatty", {"prompt": "calculate 6*7"})
    wait_for(lambda: words_streamed(channel) >= 40, 60)
    first.kill()  # mid-answer: the model has produced 40-odd of its 400 tokens
    workers(api)  # its reaper finds the run's heartbeat stale and restarts it
    finished(run, 90)
    thread.join(30)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.attempts == 2
    final = "".join(f"w{i} " for i in range(ANSWER))
    assert run.output == {"first": "The result is 42.", "second": final}
    frames = box["frames"]
    completed = [f["data"] for f in frames if f["event"] == "message.completed"]
    assert completed[-1]["text"] == final
    on_socket = "".join(
        f["data"]["text"] for f in frames
        if f["event"] == "message.delta" and f["data"]["message_id"] == completed[-1]["message_id"]
    )
    assert on_socket == final, "the text on the socket is the final message"
    if api == "responses":
        responses = llm.responses_api
        assert len(responses.created) == 3, "one response per model call: none made again"
        assert len(responses.resumed) == 1 and responses.resumed[0] is not None
        wasted = responses.tokens_generated - (1 + ANSWER)
        assert wasted == 0, f"{wasted} tokens were generated twice"
        assert "message.aborted" not in [f["event"] for f in frames]
        resent = responses.tokens_streamed - responses.tokens_generated
        print(f"\nresponses: the resumed stream re-sent {resent} tokens (free: no generation)")
        assert names(channel, "tool.") == ["tool.started", "tool.completed"]
    else:
        assert llm.count == 4, "the cut call was requested again"
        [cut] = llm.disconnects
        wasted = cut - 1  # chunks sent before the worker died, less the opening role chunk
        assert wasted >= 30
        aborted = [f["data"] for f in frames if f["event"] == "message.aborted"]
        assert [a["reason"] for a in aborted] == ["worker_lost"]
    print(f"\n{api}: a SIGKILL mid-answer cost {wasted} tokens generated twice")


def test_an_interrupt_from_the_socket_cancels_the_background_response(
    workers, daphne, session_cookie, llm
):
    llm.reply_tokens, llm.delay = 2000, 0.01
    workers("responses")
    run = start_run("bg-intr", "chat", {"prompt": "a long story"})
    sent: list[float] = []

    def send(frames):
        if not sent and any(f["event"] == "message.delta" for f in frames):
            sent.append(time.monotonic())
            llm.reply_tokens = 3  # the answer after the interrupt is short
            return {"type": "interrupt", "id": "stop-1", "data": {"text": "shorter"}}
        return None

    frames = asyncio.run(follow(daphne, session_cookie, "bg-intr", ended, send, timeout=60))
    assert frames[-1]["event"] == "run.completed"
    finished(run)
    responses = llm.responses_api
    assert len(responses.created) == 2
    assert responses.cancels == [next(iter(responses.responses))], "the model saw the cancel"
    assert responses.tokens_generated < 2000 + 3
    aborted = next(f["data"] for f in frames if f["event"] == "message.aborted")
    assert aborted["reason"] == "interrupted" and aborted["text"].startswith("w0")
    assert run.output == {"text": "w0 w1 w2 "}


def test_an_expired_response_after_a_crash_falls_back_to_a_new_request(workers, llm):
    llm.reply_tokens, llm.delay = ANSWER, 0.02
    first = workers("responses")
    run = start_run("bg-expired", "chatty", {"prompt": "calculate 6*7"})
    wait_for(lambda: words_streamed("bg-expired") >= 20, 60)
    first.kill()
    responses = llm.responses_api
    lost = list(responses.responses)[-1]
    responses.expire(lost)  # the provider no longer has it when the run comes back
    llm.delay = 0.0
    workers("responses")
    finished(run, 90)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output["second"] == "".join(f"w{i} " for i in range(ANSWER))
    assert len(responses.created) == 4
    fallback = Event.objects.get(channel__name="bg-expired", name="model.fallback")
    assert fallback.data["response_id"] == lost
    aborted = Event.objects.get(channel__name="bg-expired", name="message.aborted")
    assert aborted.data["reason"] == "response_lost"
    assert aborted.data["message_id"] == fallback.data["message_id"]
    assert Run.objects.get(pk=run.pk).attempts == 2
