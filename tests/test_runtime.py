"""The runtime with the in-process backend: runs in threads of the test process."""

from __future__ import annotations

import pytest

from agent_channels.channel.control import send_control
from agent_channels.models import Event, Run, RunStatus, Step
from agent_channels.runtime import RunConflict, UnknownAgent, start_run
from agent_channels.runtime.executor import execute_run

from .helpers import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("inprocess_runtime")]


def events(channel: str, prefix: str = "") -> list[Event]:
    return list(
        Event.objects.filter(channel__name=channel, name__startswith=prefix).order_by("seq")
    )


def names(channel: str) -> list[str]:
    return [e.name for e in events(channel)]


def finished(run: Run, timeout: float = 15) -> Run:
    def done() -> Run | None:
        run.refresh_from_db()
        return run if not run.is_active else None

    return wait_for(done, timeout)


def status_is(run: Run, status: str, timeout: float = 15) -> Run:
    def check() -> bool:
        run.refresh_from_db()
        return run.status == status

    wait_for(check, timeout)
    return run


def test_a_run_goes_through_its_lifecycle_as_events():
    run = start_run("life", "echo", {"x": 1})
    assert run.status == RunStatus.QUEUED
    finished(run)
    assert run.status == RunStatus.COMPLETED and run.output == {"x": 1}
    assert names("life") == ["run.queued", "run.started", "custom.echo", "run.completed"]
    completed = events("life", "run.completed")[0]
    assert completed.data["output"] == {"x": 1} and completed.run_id == run.pk


def test_unknown_agent_is_refused_before_anything_is_stored():
    with pytest.raises(UnknownAgent, match="nope"):
        start_run("unknown", "nope")
    assert not Run.objects.exists()


@pytest.mark.parametrize(
    ("agent", "message"),
    [("fail", "ValueError: the agent gave up"), ("bad_output", "not JSON")],
)
def test_a_failing_agent_ends_with_a_readable_error(agent, message):
    run = finished(start_run(f"fails-{agent}", agent))
    assert run.status == RunStatus.FAILED and message in run.error
    assert message in events(f"fails-{agent}", "run.failed")[0].data["error"]


def test_chat_streams_deltas_runs_tools_and_records_usage(llm):
    run = finished(start_run("chat", "chatty", {"prompt": "please calculate 6*7"}))
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"first": "The result is 42.", "second": "Hello from the test model."}
    assert llm.count == 3  # tool call, answer after the tool, second question
    tool = events("chat", "tool.completed")[0].data
    assert tool["name"] == "calculator" and tool["result"] == 42 and tool["ok"]
    completed = [e.data["text"] for e in events("chat", "message.completed")]
    assert completed == ["The result is 42.", "Hello from the test model."]
    for event in events("chat", "message.completed"):
        deltas = [e.data["text"] for e in events("chat", "message.delta")
                  if e.data["message_id"] == event.data["message_id"]]
        assert "".join(deltas) == event.data["text"]
    assert run.prompt_tokens > 0 and run.completion_tokens == 1 + 1 + 5
    assert run.model == "test-model"
    assert Step.objects.filter(run=run).count() == 5  # 3 model calls, 1 tool, 1 emit


def test_a_restarted_run_replays_completed_steps_without_calling_the_model(llm):
    run = finished(start_run("replay", "chatty", {"prompt": "calculate 2+2"}))
    assert llm.count == 3
    # As if its worker had died just before finishing.
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, heartbeat_at=None, output=None)
    assert execute_run(str(run.pk)) == "completed"
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and run.attempts == 2
    assert llm.count == 3, "completed model calls must come from the journal"
    assert run.completion_tokens == 1 + 1 + 5, "usage is not counted twice"
    assert len(events("replay", "tool.completed")) == 1
    assert events("replay", "run.started")[-1].data == {"attempt": 2, "recovered": True}


def test_interrupt_closes_the_model_stream_and_the_agent_continues(llm):
    llm.reply_tokens, llm.delay = 400, 0.01
    run = start_run("intr", "chat", {"prompt": "tell me a long story"})
    wait_for(lambda: events("intr", "message.delta"))
    send_control("intr", "interrupt", {"text": "shorter please"})
    llm_done = wait_for(lambda: llm.disconnects, 10)
    assert llm_done[0] < 400, "the stream was closed before the model finished"
    llm.reply_tokens, llm.delay = None, 0.0
    finished(run)
    assert run.status == RunStatus.COMPLETED, run.error
    aborted = events("intr", "message.aborted")[0].data
    assert aborted["reason"] == "interrupted" and aborted["text"].startswith("w0")
    assert llm.requests[-1]["messages"][-1] == {"role": "user", "content": "shorter please"}
    assert llm.requests[-1]["messages"][-2]["content"] == aborted["text"]


def test_cancel_ends_a_streaming_run():
    run = start_run("cancel", "demo", {"tokens": 10_000, "interval_ms": 5})
    wait_for(lambda: events("cancel", "message.delta"))
    send_control("cancel", "cancel", None)
    finished(run, 5)
    assert run.status == RunStatus.CANCELLED
    assert names("cancel")[-2:] == ["message.aborted", "run.cancelled"]


def test_an_uncaught_interrupt_ends_the_run_as_interrupted():
    run = start_run("demo-intr", "demo", {"tokens": 10_000, "interval_ms": 5})
    wait_for(lambda: events("demo-intr", "message.delta"))
    send_control("demo-intr", "interrupt", {"why": "enough"})
    finished(run, 5)
    assert run.status == RunStatus.INTERRUPTED
    assert events("demo-intr", "run.interrupted")[0].data["data"] == {"why": "enough"}


def test_request_input_suspends_and_resumes_with_the_answer():
    run = start_run("ask", "approval", {"action": "ship it"})
    status_is(run, RunStatus.WAITING)
    assert events("ask", "input.requested")[0].data["prompt"] == "May I ship it? (yes/no)"
    send_control("ask", "input", {"text": "yes"})
    finished(run)
    assert run.status == RunStatus.COMPLETED and run.output["approved"] is True
    assert run.attempts == 2  # the worker let go while waiting
    assert events("ask", "input.received")[0].data["value"] == {"text": "yes"}
    texts = [e.data["text"] for e in events("ask", "message.completed")]
    assert texts == ["I am about to ship it.", "Done: ship it."]


def test_cancel_while_waiting_for_input_ends_the_run():
    run = start_run("ask-cancel", "approval")
    status_is(run, RunStatus.WAITING)
    send_control("ask-cancel", "cancel", None)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert names("ask-cancel")[-1] == "run.cancelled"


def test_double_texting_reject():
    first = start_run("dt-reject", "demo", {"tokens": 1000, "interval_ms": 5})
    with pytest.raises(RunConflict):
        start_run("dt-reject", "echo", on_active="reject")
    send_control("dt-reject", "cancel", None)
    finished(first)


def test_double_texting_enqueue_runs_one_after_the_other():
    first = start_run("dt-enq", "demo", {"tokens": 20, "interval_ms": 5})
    second = start_run("dt-enq", "echo", {"n": 2}, on_active="enqueue")
    finished(second)
    first.refresh_from_db()
    assert first.status == second.status == RunStatus.COMPLETED
    assert first.finished_at <= second.started_at


def test_double_texting_interrupt_stops_the_active_run_then_starts():
    first = start_run("dt-int", "demo", {"tokens": 10_000, "interval_ms": 5})
    status_is(first, RunStatus.RUNNING)
    second = start_run("dt-int", "echo", {"n": 2}, on_active="interrupt")
    finished(second)
    first.refresh_from_db()
    assert first.status == RunStatus.INTERRUPTED
    assert events("dt-int", "run.interrupted")[0].data["by"] == str(second.pk)
    assert second.status == RunStatus.COMPLETED


def test_time_limit_fails_the_run():
    run = finished(start_run("slow", "listener", {"seconds": 30}, time_limit=1), 10)
    assert run.status == RunStatus.FAILED and "time limit" in run.error
    assert events("slow", "run.failed")[0].data["code"] == "time_limit"


def test_the_reaper_restarts_a_run_whose_worker_died(settings):
    from agent_channels.runtime import lifecycle

    # The monitor's own reaper would race this one (one reaper at a time: it gets 0).
    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "REAP_EVERY_SECONDS": 0}
    run = finished(start_run("reap", "steps"))
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, heartbeat_at=None)
    assert lifecycle.reap() == 1
    finished(run)
    assert run.status == RunStatus.COMPLETED and run.output == {"n": 2} and run.attempts == 2


def test_cancel_cuts_a_stalled_model_stream_at_once(llm):
    import time

    llm.reply_tokens, llm.delay = 5, 20.0  # the model goes quiet after its first chunk
    run = start_run("stall", "chat", {"prompt": "hello"})
    wait_for(lambda: llm.count == 1)
    time.sleep(0.2)
    started = time.monotonic()
    send_control("stall", "cancel", None)
    finished(run, 5)
    assert time.monotonic() - started < 1.0
    assert run.status == RunStatus.CANCELLED


def test_runtime_settings_are_checked(settings):
    from django.core.checks import Error

    from agent_channels.runtime.checks import check_runtime_settings

    assert check_runtime_settings() == []
    settings.AGENT_CHANNELS = {
        "AGENTS": {"x": "tests.agents.nothing_here"},
        "RUN_BACKEND": "agent_channels.models.Run",
        "DOUBLE_TEXTING": "sometimes",
    }
    ids = [e.id for e in check_runtime_settings()]
    assert ids == ["agent_channels.E101", "agent_channels.E102", "agent_channels.E103"]
    assert all(isinstance(e, Error) and e.hint for e in check_runtime_settings())


def test_estimated_cost_uses_model_prices(settings):
    from agent_channels.runtime.pricing import estimated_cost

    run = Run(model="m", prompt_tokens=1_000_000, completion_tokens=500_000)
    assert estimated_cost(run) is None
    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "MODEL_PRICES": {"m": [0.5, 2.0]}}
    assert estimated_cost(run) == 1.5


def test_the_reaper_enqueues_a_queued_run_whose_task_was_lost(settings):
    from datetime import timedelta

    from django.utils import timezone

    from agent_channels.runtime import lifecycle

    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "REAP_EVERY_SECONDS": 0}
    run = finished(start_run("lost-task", "steps"))
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.QUEUED, created_at=timezone.now() - timedelta(minutes=5)
    )
    # One reaper at a time per database: a server process an earlier test left on this
    # database may take the pass; either way the run is re-sent (enqueued_at) and completes.
    wait_for(lambda: lifecycle.reap() == 1 or Run.objects.get(pk=run.pk).enqueued_at is not None)
    finished(run)
    assert run.status == RunStatus.COMPLETED


def test_the_time_limit_cuts_a_stalled_model_stream(llm):
    import time

    llm.reply_tokens, llm.delay = 5, 30.0
    started = time.monotonic()
    run = finished(start_run("stall-limit", "chat", {"prompt": "hi"}, time_limit=1), 10)
    assert time.monotonic() - started < 5
    assert run.status == RunStatus.FAILED and "time limit" in run.error
    assert events("stall-limit", "run.failed")[0].data["code"] == "time_limit"
    assert llm.disconnects or llm.completed == 0, "the model stream was cut, not finished"


def test_a_failing_tool_is_reported_to_the_model_not_fatal(llm):
    run = finished(start_run("tool-error", "chatty", {"prompt": "calculate 1/0"}))
    assert run.status == RunStatus.COMPLETED, run.error
    tool = events("tool-error", "tool.completed")[0].data
    assert tool["ok"] is False and "ZeroDivisionError" in tool["result"]["error"]
    assert "ZeroDivisionError" in run.output["first"]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_a_tool_result_no_database_stores_is_a_tool_error_not_a_failed_run(llm, value):
    run = finished(start_run(f"tool-{value}", "unstorable_tool", {"prompt": f"calculate {value}"}))
    assert run.status == RunStatus.COMPLETED, run.error
    tool = events(f"tool-{value}", "tool.completed")[0].data
    assert tool["ok"] is False and "cannot be stored" in tool["result"]["error"]
    # The model saw the error as the tool's result and answered with it.
    assert "cannot be stored" in run.output


def test_a_tool_result_over_max_event_bytes_is_a_tool_error_not_a_failed_run(llm, settings):
    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "MAX_EVENT_BYTES": 50_000}
    run = finished(start_run("tool-big", "big_tool", {"prompt": "calculate 100000"}))
    assert run.status == RunStatus.COMPLETED, run.error
    tool = events("tool-big", "tool.completed")[0].data
    assert tool["ok"] is False and "at most 50000 bytes" in tool["result"]["error"]


def test_a_tool_that_overruns_its_deadline_is_a_tool_error_the_model_sees(llm):
    import time

    started = time.monotonic()
    run = finished(start_run("tool-slow", "slow_tool", {"prompt": "calculate 30"}), 10)
    assert time.monotonic() - started < 8  # not the tool's 30 s
    assert run.status == RunStatus.COMPLETED, run.error
    tool = events("tool-slow", "tool.completed")[0].data
    assert tool["ok"] is False and tool["result"]["code"] == "tool_time_limit"
    assert "time limit of 0.5 s" in run.output


def test_a_cancel_does_not_wait_for_a_running_tool(llm):
    run = start_run("tool-cancel", "slow_tool", {"prompt": "calculate 60", "limit": 30})
    wait_for(lambda: events("tool-cancel", "tool.started"))
    send_control("tool-cancel", "cancel", None)
    finished(run, 10)  # not the tool's 60 s nor its 30 s deadline
    assert run.status == RunStatus.CANCELLED
    assert not events("tool-cancel", "tool.completed")


def test_a_run_holds_a_bounded_number_of_pending_interrupts_and_says_which_it_refused(settings):
    settings.AGENT_CHANNELS = {**settings.AGENT_CHANNELS, "MAX_PENDING_CONTROL": 3}
    run = start_run("deaf", "deaf", {"seconds": 3})
    wait_for(lambda: events("deaf", "custom.running"))
    for i in range(5):
        send_control("deaf", "interrupt", {"n": i}, frame_id=f"f{i}")
    rejected = wait_for(lambda: events("deaf", "control.rejected") if len(
        events("deaf", "control.rejected")) == 2 else None)
    assert [e.data["id"] for e in rejected] == ["f3", "f4"]
    assert {e.data["code"] for e in rejected} == {"control_queue_full"}
    finished(run)


def test_a_replay_that_takes_different_steps_fails_clearly():
    run = finished(start_run("nondet", "steps"))
    Step.objects.filter(run=run, index=0).update(kind="model")
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, heartbeat_at=None)
    assert execute_run(str(run.pk)) == "failed"
    run.refresh_from_db()
    assert "NonDeterministicReplay" in run.error and "same steps" in run.error
