"""Runs on the Responses API with the in-process backend, against the loopback model server."""

from __future__ import annotations

import threading

import pytest
from django.core.checks import Error
from django.utils import timezone

from agent_channels import publish
from agent_channels.channel.control import send_control
from agent_channels.channel.publishing import MessageStream
from agent_channels.models import Event, Run, RunStatus, Step, StepStatus
from agent_channels.runtime import responses, start_run
from agent_channels.runtime.executor import execute_run
from agent_channels.runtime.llm import AbortHandle, StreamAborted, default_model
from agent_channels.runtime.registry import agent, agent_options

from .helpers import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("inprocess_runtime")]


def events(channel: str, prefix: str = "") -> list[Event]:
    return list(
        Event.objects.filter(channel__name=channel, name__startswith=prefix).order_by("seq")
    )


def finished(run: Run, timeout: float = 15) -> Run:
    def done() -> bool:
        run.refresh_from_db()
        return not run.is_active

    wait_for(done, timeout)
    return run


def message_texts(channel: str) -> dict[str, str]:
    """Each message's deltas concatenated."""
    texts: dict[str, str] = {}
    for event in events(channel, "message.delta"):
        mid = event.data["message_id"]
        texts[mid] = texts.get(mid, "") + event.data["text"]
    return texts


@pytest.fixture
def on_responses(settings):
    def use(background: bool) -> None:
        settings.AGENT_CHANNELS = {
            **settings.AGENT_CHANNELS,
            "OPENAI_API": "responses",
            "OPENAI_BACKGROUND": background,
        }

    return use


@pytest.mark.parametrize("background", [False, True])
def test_chat_on_the_responses_api_streams_runs_tools_and_records_usage(
    llm, on_responses, background
):
    on_responses(background)
    run = finished(start_run("r-chat", "chatty", {"prompt": "please calculate 6*7"}))
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"first": "The result is 42.", "second": "Hello from the test model."}
    assert llm.count == 0, "no chat completions request"
    created = llm.responses_api.created
    assert len(created) == 3
    assert [bool(b.get("background")) for b in created] == [background] * 3
    assert created[0]["tools"][0]["name"] == "calculator", "tools are flat"
    outputs = [i for i in created[1]["input"] if i.get("type") == "function_call_output"]
    assert outputs == [{"type": "function_call_output", "call_id": "call_0", "output": "42"}]
    completed = events("r-chat", "message.completed")
    assert [e.data["text"] for e in completed] == ["The result is 42.", "Hello from the test model."]
    texts = message_texts("r-chat")
    assert all(texts[e.data["message_id"]] == e.data["text"] for e in completed)
    assert run.completion_tokens == 1 + 1 + 5 and run.prompt_tokens > 0
    if background:
        states = [s.result for s in Step.objects.filter(run=run, kind="model")]
        assert all(s["response_id"] in llm.responses_api.responses for s in states)


def test_the_api_is_chosen_per_call_per_agent_or_by_setting(llm, settings):
    @agent("r-opts", api="responses", background=True)
    def opts(ctx, input):
        first = ctx.chat([{"role": "user", "content": "hi"}])
        second = ctx.chat([{"role": "user", "content": "hi"}], api="chat_completions")
        return [first.text, second.text]

    assert agent_options("r-opts") == {"api": "responses", "background": True}
    run = finished(start_run("r-opts", "r-opts"))
    assert run.status == RunStatus.COMPLETED, run.error
    assert len(llm.responses_api.created) == 1 and llm.responses_api.created[0]["background"]
    assert llm.count == 1
    with pytest.raises(ValueError, match="api="):
        agent("bad", api="graphql")


def test_an_unknown_api_in_a_call_fails_the_run_clearly(llm):
    @agent("r-bad-api")
    def bad(ctx, input):
        return ctx.chat([{"role": "user", "content": "hi"}], api="soap").text

    run = finished(start_run("r-bad-api", "r-bad-api"))
    assert run.status == RunStatus.FAILED and "'soap' is not a model API" in run.error


def test_reasoning_summaries_reach_the_result(llm, on_responses):
    on_responses(False)

    @agent("r-reason")
    def reason(ctx, input):
        return ctx.chat([{"role": "user", "content": "hi"}], reasoning={"summary": "auto"}).reasoning

    run = finished(start_run("r-reason", "r-reason"))
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == "Thinking it over."
    [reasoning] = events("r-reason", "model.reasoning")
    [completed] = events("r-reason", "message.completed")
    assert reasoning.data == {"message_id": completed.data["message_id"],
                              "text": "Thinking it over."}


def test_interrupt_cancels_the_background_response_and_keeps_the_partial_text(llm, on_responses):
    on_responses(True)
    llm.reply_tokens, llm.delay = 400, 0.01
    run = start_run("r-intr", "chat", {"prompt": "tell me a long story"})
    wait_for(lambda: events("r-intr", "message.delta"))
    send_control("r-intr", "interrupt", {"text": "shorter please"})
    wait_for(lambda: llm.responses_api.cancels, 10)
    llm.reply_tokens, llm.delay = None, 0.0
    finished(run)
    assert run.status == RunStatus.COMPLETED, run.error
    first = llm.responses_api.created[0]
    assert llm.responses_api.cancels[0] == next(iter(llm.responses_api.responses))
    assert llm.responses_api.tokens_generated < 400 + 5, "the cancel stopped the spend"
    aborted = events("r-intr", "message.aborted")[0].data
    assert aborted["reason"] == "interrupted" and aborted["text"].startswith("w0")
    last_input = llm.responses_api.created[-1]["input"]
    assert last_input[-1] == {"role": "user", "content": "shorter please"}
    assert last_input[-2] == {"role": "assistant", "content": aborted["text"]}
    assert first["background"] is True


@pytest.mark.parametrize("kind", ["cancel", "time_limit"])
def test_cancel_and_time_limit_cancel_the_background_response(llm, on_responses, kind):
    on_responses(True)
    llm.reply_tokens, llm.delay = 2000, 0.01
    limit = 2 if kind == "time_limit" else None
    run = start_run(f"r-{kind}", "chat", {"prompt": "hi"}, time_limit=limit)
    wait_for(lambda: events(f"r-{kind}", "message.delta"))
    if kind == "cancel":
        send_control(f"r-{kind}", "cancel", None)
    finished(run, 10)
    assert run.status == (RunStatus.CANCELLED if kind == "cancel" else RunStatus.FAILED)
    assert len(llm.responses_api.cancels) == 1
    aborted = events(f"r-{kind}", "message.aborted")[0].data
    assert aborted["reason"] == ("cancelled" if kind == "cancel" else "time_limit")


def test_human_input_and_double_texting_work_on_background_responses(llm, on_responses):
    on_responses(True)

    @agent("r-ask")
    def ask(ctx, input):
        first = ctx.chat([{"role": "user", "content": "hi"}]).text
        answer = ctx.request_input("go on?")
        return [first, answer]

    run = start_run("r-ask", "r-ask")
    wait_for(lambda: Run.objects.get(pk=run.pk).status == RunStatus.WAITING)
    send_control("r-ask", "input", "yes")
    finished(run)
    assert run.status == RunStatus.COMPLETED and run.output == ["Hello from the test model.", "yes"]
    assert len(llm.responses_api.created) == 1, "the replay took the answer from the journal"

    llm.reply_tokens, llm.delay = 2000, 0.01
    first = start_run("r-dt", "chat", {"prompt": "hi"})
    wait_for(lambda: events("r-dt", "message.delta"))
    third = finished(start_run("r-dt", "echo", "next", on_active="interrupt"))
    assert third.status == RunStatus.COMPLETED
    assert finished(first).status == RunStatus.INTERRUPTED
    assert len(llm.responses_api.cancels) == 1


# -- taking over a background call that a dead worker started ---------------------------


def crashed_run(llm, channel: str, *, cut_after: int, journal: str = "exact") -> dict:
    """A run whose first attempt died in a background call, as its worker left it.

    The response was created and streamed ``cut_after`` tokens into the channel; the
    journal row says where the stream was (``journal``: "exact", "behind" the channel by
    a few events, or "ahead" of it).
    """
    publish(channel, "custom.setup")
    run = Run.objects.create(
        channel=Event.objects.filter(channel__name=channel).first().channel,
        agent="chat",
        input={"prompt": "hi"},
        status=RunStatus.RUNNING,
        attempts=1,
        started_at=timezone.now(),
    )
    message_id = f"{run.pk}-0-a1"
    stream = MessageStream(channel, run=run.pk, message_id=message_id)
    handle = AbortHandle()
    marks: list[tuple[int, int]] = []

    def on_event(result: responses.ResponseResult) -> None:
        marks.append((result.sequence_number, len(stream.text)))

    def on_text(delta: str) -> None:
        stream.write(delta)
        if len(stream.text.split()) == cut_after:
            threading.Thread(target=handle.abort).start()

    with pytest.raises(StreamAborted) as info:
        responses.create(
            input=[{"role": "user", "content": "hi"}], model=default_model(), tools=[],
            params={}, on_text=on_text, handle=handle, background=True, on_event=on_event,
        )
    stream.flush()
    partial = info.value.args[0]
    seq, chars = {"exact": marks[-1], "behind": marks[-4], "ahead": (marks[-1][0], 10**6)}[journal]
    state = {"api": "responses", "background": True, "message_id": message_id,
             "response_id": partial.response_id, "seq": seq, "chars": chars}
    Step.objects.create(run=run, index=0, kind="model", name=default_model(),
                        status=StepStatus.STARTED, result=state, attempt=1)
    return {"run": run, "state": state, "published": stream.text}


@pytest.mark.parametrize("journal", ["exact", "behind", "ahead"])
def test_a_recovered_run_continues_the_same_message_from_the_stored_response(
    llm, on_responses, journal
):
    on_responses(True)
    llm.reply_tokens, llm.delay = 60, 0.005
    crash = crashed_run(llm, "r-take", cut_after=10, journal=journal)
    run, state = crash["run"], crash["state"]
    assert execute_run(str(run.pk)) == "completed"
    run.refresh_from_db()
    full = "".join(f"w{i} " for i in range(60))
    assert run.output == {"text": full}
    api = llm.responses_api
    assert len(api.created) == 1, "no new response: the stored one was taken over"
    assert api.resumed == [None if journal == "ahead" else state["seq"]]
    assert api.tokens_generated == 60, "not one token generated twice"
    assert not events("r-take", "message.aborted")
    [completed] = events("r-take", "message.completed")
    assert completed.data == {"message_id": state["message_id"], "text": full}
    assert message_texts("r-take") == {state["message_id"]: full}
    assert run.completion_tokens == 60
    step = Step.objects.get(run=run, index=0)
    assert step.status == StepStatus.COMPLETED and step.result["response_id"] == state["response_id"]


def test_an_expired_response_falls_back_to_a_new_request_and_says_so(llm, on_responses):
    on_responses(True)
    llm.reply_tokens, llm.delay = 30, 0.005
    crash = crashed_run(llm, "r-gone", cut_after=5)
    run, state = crash["run"], crash["state"]
    llm.responses_api.expire(state["response_id"])
    assert execute_run(str(run.pk)) == "completed"
    run.refresh_from_db()
    full = "".join(f"w{i} " for i in range(30))
    assert run.output == {"text": full}
    assert len(llm.responses_api.created) == 2
    [fallback] = events("r-gone", "model.fallback")
    assert fallback.data["response_id"] == state["response_id"]
    assert fallback.data["message_id"] == state["message_id"]
    assert "gone" in fallback.data["reason"]
    [aborted] = events("r-gone", "message.aborted")
    assert aborted.data == {"message_id": state["message_id"], "text": crash["published"],
                            "reason": "response_lost"}
    [completed] = events("r-gone", "message.completed")
    assert completed.data["message_id"] == f"{run.pk}-0-a2" and completed.data["text"] == full
    assert message_texts("r-gone")[completed.data["message_id"]] == full


def test_a_run_cancelled_while_its_worker_was_dead_cancels_the_stored_response(
    llm, on_responses
):
    on_responses(True)
    llm.reply_tokens, llm.delay = 3000, 0.01
    crash = crashed_run(llm, "r-dead-cancel", cut_after=3)
    run, state = crash["run"], crash["state"]
    send_control("r-dead-cancel", "cancel", None)
    assert execute_run(str(run.pk)) == "cancelled"
    assert llm.responses_api.cancels == [state["response_id"]]
    [aborted] = events("r-dead-cancel", "message.aborted")
    assert aborted.data["message_id"] == state["message_id"]
    assert aborted.data["text"] == crash["published"]


def test_the_model_api_settings_are_checked(settings):
    from agent_channels.runtime.checks import check_runtime_settings

    settings.AGENT_CHANNELS = {
        **settings.AGENT_CHANNELS, "OPENAI_API": "completions", "OPENAI_BACKGROUND": "yes"
    }
    assert [e for e in check_runtime_settings() if e.id in ("agent_channels.E104",
                                                               "agent_channels.E105")] == [
        Error(
            "AGENT_CHANNELS['OPENAI_API'] = 'completions' is not a model API.",
            hint="Use 'chat_completions' or 'responses'.",
            id="agent_channels.E104",
        ),
        Error(
            "AGENT_CHANNELS['OPENAI_BACKGROUND'] = 'yes' is not a bool.",
            hint="Use True to run Responses API calls in background mode, False not to.",
            id="agent_channels.E105",
        ),
    ]


def test_a_background_call_journals_its_position_per_second_not_per_token(
    llm, on_responses, monkeypatch
):
    from agent_channels.runtime.journal import Journal

    on_responses(True)
    llm.reply_tokens, llm.delay = 300, 0.005  # 300 tokens in about 1.5 s
    states: list[dict] = []
    start = Journal.start

    def counting(self, record, state=None):
        if record.kind == "model":
            states.append(dict(state or {}))
        start(self, record, state)

    monkeypatch.setattr(Journal, "start", counting)
    run = finished(start_run("r-cheap", "chat", {"prompt": "hi"}))
    assert run.status == RunStatus.COMPLETED, run.error
    assert 3 <= len(states) <= 6, states  # start, response id, then about once a second
    assert states[1]["seq"] == 0 and states[1]["response_id"]
    published = "".join(message_texts("r-cheap").values())
    assert all(len(published) >= s.get("chars", 0) for s in states)
    assert [s.get("seq", -1) for s in states] == sorted(s.get("seq", -1) for s in states)


def test_a_dropped_connection_re_attaches_to_the_background_response(llm, on_responses):
    on_responses(True)
    llm.reply_tokens, llm.delay = 50, 0.005
    llm.responses_api.drop_after = 10  # the network fails; the model does not
    run = finished(start_run("r-drop", "chat", {"prompt": "hi"}))
    assert run.status == RunStatus.COMPLETED, run.error
    full = "".join(f"w{i} " for i in range(50))
    assert run.output == {"text": full}
    api = llm.responses_api
    assert len(api.created) == 1 and len(api.resumed) == 1 and api.resumed[0] is not None
    assert api.tokens_generated == 50
    assert not events("r-drop", "message.aborted")
    [completed] = events("r-drop", "message.completed")
    assert message_texts("r-drop") == {completed.data["message_id"]: full}


def test_a_background_call_is_taken_over_even_if_the_api_setting_changed_meanwhile(llm):
    llm.reply_tokens, llm.delay = 30, 0.005
    crash = crashed_run(llm, "r-switch", cut_after=5)  # OPENAI_API is chat_completions now
    assert execute_run(str(crash["run"].pk)) == "completed"
    assert llm.count == 0, "no chat completion: the stored response was taken over"
    assert len(llm.responses_api.created) == 1 and len(llm.responses_api.resumed) == 1
    [completed] = events("r-switch", "message.completed")
    assert completed.data["message_id"] == crash["state"]["message_id"]
    assert completed.data["text"] == "".join(f"w{i} " for i in range(30))
