"""The Responses API: the loopback server driven by the real openai SDK, and the client module."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from agent_channels.runtime import responses
from agent_channels.runtime.llm import AbortHandle, StreamAborted

from .helpers import wait_for


@pytest.fixture
def client(llm):
    return openai.OpenAI(base_url=llm.base_url, api_key="test-key", max_retries=0)


# -- the loopback server, through the SDK -----------------------------------------------


def test_stream_events_carry_sequence_numbers_and_usage(client, llm):
    events = list(client.responses.create(model="m", input="hi", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Hello from the test model." == events[-1].response.output_text
    usage = events[-1].response.usage
    assert (usage.input_tokens, usage.output_tokens) == (1, 5)
    assert len(llm.responses_api.created) == 1
    assert llm.responses_api.tokens_generated == llm.responses_api.tokens_streamed == 5


def test_a_background_response_generates_on_with_no_client_and_resumes_after_n(client, llm):
    llm.reply_tokens, llm.delay = 40, 0.01
    stream = client.responses.create(
        model="m", input="hi", stream=True, background=True, store=True
    )
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta" and event.delta == "w4 ":
            break
    stream.close()
    response_id, last = seen[0].response.id, seen[-1].sequence_number
    # Nobody is attached, yet the response completes on the server.
    wait_for(lambda: llm.responses_api.get_response(response_id).status == "completed", 10)
    assert client.responses.retrieve(response_id).status == "completed"
    rest = list(client.responses.retrieve(response_id, stream=True, starting_after=last))
    assert rest[0].sequence_number == last + 1
    text = "".join(e.delta for e in seen + rest if e.type == "response.output_text.delta")
    assert text == "".join(f"w{i} " for i in range(40))
    assert llm.responses_api.resumed == [last]
    assert llm.responses_api.tokens_generated == 40, "generated once, whoever listened"
    assert len(llm.responses_api.created) == 1


def test_a_foreground_response_stops_generating_when_its_client_goes(client, llm):
    llm.reply_tokens, llm.delay = 200, 0.01
    stream = client.responses.create(model="m", input="hi", stream=True)
    for event in stream:
        if event.type == "response.output_text.delta":
            response_id = event.item_id
            break
    stream.close()
    time.sleep(0.5)
    assert llm.responses_api.tokens_generated < 100, response_id


def test_cancel_stops_a_background_response_and_its_stream_just_ends(client, llm):
    llm.reply_tokens, llm.delay = 1000, 0.01
    stream = client.responses.create(
        model="m", input="hi", stream=True, background=True, store=True
    )
    first = next(iter(stream))
    assert client.responses.cancel(first.response.id).status == "cancelled"
    rest = [e.type for e in stream]
    assert "response.completed" not in rest
    assert llm.responses_api.cancels == [first.response.id]
    generated = llm.responses_api.tokens_generated
    time.sleep(0.1)
    assert llm.responses_api.tokens_generated == generated < 1000


def test_function_calls_and_their_outputs(client, llm):
    tool = {"type": "function", "name": "calculator", "parameters": {"type": "object"}}
    events = list(
        client.responses.create(model="m", input="calculate 6*7", tools=[tool], stream=True)
    )
    [call] = events[-1].response.output
    assert (call.type, call.name, call.arguments) == (
        "function_call",
        "calculator",
        '{"expression": "6*7"}',
    )
    answer = client.responses.create(
        model="m",
        stream=True,
        input=[
            {"role": "user", "content": "calculate 6*7"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "42"},
        ],
    )
    assert list(answer)[-1].response.output_text == "The result is 42."


def test_background_needs_store_and_unknown_ids_are_404(client, llm):
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="m", input="hi", background=True, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nope", stream=True, starting_after=3)


# -- agent_channels.runtime.responses ---------------------------------------------------


def test_to_input_and_to_tools_translate_the_chat_shapes():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "calculate 1+1"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
    ]
    assert responses.to_input(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "calculate 1+1"},
        {"type": "function_call", "call_id": "c1", "name": "calc", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "2"},
    ]
    spec = {"type": "function", "function": {"name": "calc", "parameters": {}}}
    assert responses.to_tools([spec]) == [{"type": "function", "name": "calc", "parameters": {}}]


def test_create_streams_text_and_returns_id_sequence_and_usage(llm):
    llm.reply_tokens = 12
    seen: list[str] = []
    events: list[int | None] = []
    result = responses.create(
        input=[{"role": "user", "content": "hi"}], model="m", tools=[], params={},
        on_text=seen.append, handle=AbortHandle(), background=True,
        on_event=lambda r: events.append(r.sequence_number),
    )
    assert "".join(seen) == result.content == result.output_text == "".join(
        f"w{i} " for i in range(12)
    )
    assert result.response_id in llm.responses_api.responses
    assert result.sequence_number == events[-1] == len(events) - 1
    assert (result.completion_tokens, result.status, result.finish_reason) == (
        12, "completed", "stop"
    )
    assert llm.responses_api.created[0]["background"] is True
    assert llm.responses_api.created[0]["store"] is True


def test_create_returns_tool_calls_in_the_chat_shape(llm):
    result = responses.create(
        input=[{"role": "user", "content": "calculate 2+2"}], model="m",
        tools=[{"type": "function", "name": "calculator", "parameters": {}}], params={},
        on_text=lambda d: None, handle=AbortHandle(),
    )
    assert result.tool_calls == [{"id": "call_0", "type": "function", "function": {
        "name": "calculator", "arguments": '{"expression": "2+2"}'}}]
    assert result.finish_reason == "tool_calls"


def test_reasoning_summaries_are_collected(llm):
    result = responses.create(
        input=[{"role": "user", "content": "hi"}], model="m", tools=[],
        params={"reasoning": {"summary": "auto"}}, on_text=lambda d: None, handle=AbortHandle(),
    )
    assert result.reasoning == "Thinking it over."
    assert result.content == "Hello from the test model."


def test_abort_cuts_the_stream_resume_continues_after_it_and_cancel_stops_it(llm):
    llm.reply_tokens, llm.delay = 300, 0.01
    handle = AbortHandle()
    seen: list[str] = []

    def on_text(delta: str) -> None:
        seen.append(delta)
        if len(seen) == 5:
            threading.Thread(target=handle.abort).start()

    with pytest.raises(StreamAborted) as info:
        responses.create(
            input=[{"role": "user", "content": "hi"}], model="m", tools=[], params={},
            on_text=on_text, handle=handle, background=True,
        )
    partial: responses.ResponseResult = info.value.args[0]
    assert partial.aborted and partial.content == "".join(seen)
    assert partial.response_id and partial.sequence_number is not None
    more: list[str] = []
    second = AbortHandle()

    def on_more(delta: str) -> None:
        more.append(delta)
        if len(more) == 3:
            second.abort()

    with pytest.raises(StreamAborted):
        responses.resume(
            partial.response_id, partial.sequence_number, on_text=on_more, handle=second
        )
    assert "".join(seen + more) == "".join(f"w{i} " for i in range(len(seen) + len(more)))
    assert responses.cancel(partial.response_id) is True
    assert llm.responses_api.cancels == [partial.response_id]
    generated = llm.responses_api.tokens_generated
    time.sleep(0.1)
    assert llm.responses_api.tokens_generated == generated < 300
    with pytest.raises(responses.ResponseGone, match="cancelled"):
        responses.resume(
            partial.response_id, None, on_text=lambda d: None, handle=AbortHandle()
        )


def test_resume_of_an_expired_or_failed_response_is_gone(llm):
    llm.reply_tokens, llm.delay = 50, 0.01
    llm.responses_api.fail_after = 3
    with pytest.raises(responses.ResponseFailed):
        responses.create(
            input=[{"role": "user", "content": "hi"}], model="m", tools=[], params={},
            on_text=lambda d: None, handle=AbortHandle(), background=True,
        )
    [failed_id] = llm.responses_api.responses
    with pytest.raises(responses.ResponseGone, match="failed"):
        responses.resume(failed_id, 2, on_text=lambda d: None, handle=AbortHandle())
    llm.responses_api.expire(failed_id)
    with pytest.raises(responses.ResponseGone, match="gone"):
        responses.resume(failed_id, 2, on_text=lambda d: None, handle=AbortHandle())
    assert responses.cancel(failed_id) is False
