"""A small OpenAI-compatible model server for the tests, on loopback.

``/v1/chat/completions`` speaks the API's streaming format (``data: {chunk}\\n\\n`` server-sent events, tool
call deltas, a usage chunk when ``stream_options.include_usage`` is set, ``data: [DONE]``)
over chunked HTTP/1.1, so the real ``openai`` SDK runs end to end. It counts requests,
notices when a client closes a stream early, and can stream slowly.

Replies are decided from the request:
- tools offered, the last message from the user, and it contains "calculate X": a
  ``calculator`` tool call with ``{"expression": X}``;
- the last message is a tool result: ``"The result is <result>."``;
- otherwise ``reply_tokens`` words ``w0 w1 …`` (default: a short greeting).

``/v1/responses`` is the Responses API (see :class:`ResponsesAPI` below): the same
replies as typed stream events with a ``sequence_number``, background mode that keeps
generating with no client attached, re-attaching with ``starting_after``, cancel, and
counters the tests assert on.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request (the SIGKILL tests) resets its connection: expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class LLMServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # time.time() of each request in ``requests``
        self.completed = 0
        self.disconnects: list[int] = []  # chunks sent before each client went away
        self.delay = 0.0
        self.reply_tokens: int | None = None
        self.lock = threading.Lock()
        self.generation = 0  # bumped by reset(): streams of an earlier test stop quietly
        self.responses_api = ResponsesAPI(self)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.responses_api.get(self)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if "/responses" in self.path:
                    server.responses_api.post(self, body)
                    return
                with server.lock:
                    server.requests.append(body)
                    server.arrivals.append(time.time())
                if not self.path.endswith("/chat/completions"):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                server.serve(self, body)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        with self.lock:
            self.generation += 1
            self.requests.clear()
            self.arrivals.clear()
            self.disconnects.clear()
            self.completed = 0
        self.delay = 0.0
        self.reply_tokens = None
        self.responses_api.reset()

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- replies -------------------------------------------------------------------------

    def plan(self, body: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
        messages = body.get("messages") or [{}]
        last = messages[-1]
        if last.get("role") == "tool":
            return [f"The result is {last.get('content')}."], []
        return self.reply(str(last.get("content") or ""), bool(body.get("tools")))

    def reply(self, prompt: str, tools: bool) -> tuple[list[str], list[dict[str, Any]]]:
        """Text tokens and tool calls answering the user's ``prompt``."""
        match = re.search(r"calculate (.+)", prompt)
        if tools and match:
            return [], [{"name": "calculator", "arguments": json.dumps({"expression": match[1]})}]
        if self.reply_tokens is not None:
            return [f"w{i} " for i in range(self.reply_tokens)], []
        return ["Hello", " from", " the", " test", " model."], []

    def serve(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        texts, calls = self.plan(body)
        model = body.get("model", "test-model")
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": choices, **extra}

        events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None}])]
        events += [chunk([{"index": 0, "delta": {"content": t}, "finish_reason": None}])
                   for t in texts]
        for n, call in enumerate(calls):
            args = call["arguments"]
            half = len(args) // 2
            events.append(chunk([{"index": 0, "delta": {"tool_calls": [
                {"index": n, "id": f"call_{n}", "type": "function",
                 "function": {"name": call["name"], "arguments": args[:half]}}]},
                "finish_reason": None}]))
            events.append(chunk([{"index": 0, "delta": {"tool_calls": [
                {"index": n, "function": {"arguments": args[half:]}}]}, "finish_reason": None}]))
        events.append(chunk([{"index": 0, "delta": {},
                              "finish_reason": "tool_calls" if calls else "stop"}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
            events.append(chunk([], usage={"prompt_tokens": prompt,
                                           "completion_tokens": len(texts) + len(calls),
                                           "total_tokens": prompt + len(texts) + len(calls)}))
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        sent = 0
        generation = self.generation
        try:
            for event in [*(f"data: {json.dumps(e)}\n\n" for e in events), "data: [DONE]\n\n"]:
                if self.delay and sent:
                    until = time.monotonic() + self.delay
                    while time.monotonic() < until:
                        if self.generation != generation:
                            handler.close_connection = True
                            return
                        time.sleep(min(0.01, self.delay))
                data = event.encode()
                handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                handler.wfile.flush()
                sent += 1
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
            with self.lock:
                self.completed += 1
        except (BrokenPipeError, ConnectionResetError):
            with self.lock:
                self.disconnects.append(sent)
            handler.close_connection = True


def _write_chunk(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    handler.wfile.flush()


def _send_json(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()


def _error(handler: BaseHTTPRequestHandler, status: int, message: str) -> None:
    _send_json(handler, status, {"error": {"message": message, "type": "invalid_request_error",
                                           "param": None, "code": None}})


class StoredResponse:
    """One response: its events so far (``sequence_number`` == index) and its state."""

    def __init__(self, response_id: str, body: dict[str, Any], generation: int) -> None:
        self.id = response_id
        self.body = body
        self.generation = generation
        self.background = bool(body.get("background"))
        self.created_at = int(time.time())
        self.status = "queued" if self.background else "in_progress"
        self.events: list[dict[str, Any]] = []
        self.output: list[dict[str, Any]] = []
        self.tokens = 0  # output tokens generated so far: what the caller pays for
        self.cond = threading.Condition()
        self.stop = False  # cancelled, or (not background) its only client went away
        self.done = False

    def input_tokens(self) -> int:
        raw = self.body.get("input")
        return len(json.dumps(raw).split()) if raw is not None else 0

    def snapshot(self) -> dict[str, Any]:
        usage = None
        if self.done:
            usage = {"input_tokens": self.input_tokens(),
                     "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                     "output_tokens": self.tokens,
                     "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": self.input_tokens() + self.tokens}
        return {"id": self.id, "object": "response", "created_at": self.created_at,
                "model": self.body.get("model", "test-model"), "status": self.status,
                "background": self.background, "error": None, "incomplete_details": None,
                "instructions": self.body.get("instructions"), "metadata": {},
                "output": list(self.output), "parallel_tool_calls": True, "temperature": 1.0,
                "tool_choice": "auto", "tools": self.body.get("tools") or [], "top_p": 1.0,
                "usage": usage}


class ResponsesAPI:
    """``/v1/responses`` of the loopback server.

    Every response is generated by a thread of its own, ``server.delay`` seconds per text
    token, into a list of events; each HTTP stream (the creating POST, or a
    ``GET /v1/responses/{id}?stream=true&starting_after=N``) only reads that list. So a
    background response (``background=True``, which needs ``store=True``) keeps generating
    when its client goes away, like OpenAI's; a foreground one stops with its client.
    ``POST /v1/responses/{id}/cancel`` stops one (its streams just end, as OpenAI's do).

    Counters for the tests: ``created`` (bodies of created responses), ``resumed``
    (``starting_after`` of every re-attached stream), ``cancels`` (ids),
    ``tokens_generated`` (text tokens produced: what a caller pays) and
    ``tokens_streamed`` (text tokens written to clients, re-sent ones included).
    ``expire(id)`` forgets a response (the API then answers 404, as after its retention);
    ``fail_after = N`` makes new responses fail after N text tokens; ``drop_after = N``
    makes the next creating stream drop its connection after N text tokens (a network
    failure: the response itself goes on).
    """

    def __init__(self, server: LLMServer) -> None:
        self.server = server
        self.lock = threading.Lock()
        self.ids = itertools.count()
        self.responses: dict[str, StoredResponse] = {}
        self.created: list[dict[str, Any]] = []
        self.resumed: list[int | None] = []
        self.cancels: list[str] = []
        self.tokens_generated = 0
        self.tokens_streamed = 0
        self.fail_after: int | None = None
        self.drop_after: int | None = None
        self.reasoning_summary = ["Thinking", " it", " over."]

    def reset(self) -> None:
        with self.lock:
            for response in self.responses.values():
                with response.cond:
                    response.stop = True
                    response.cond.notify_all()
            self.responses.clear()
            self.created.clear()
            self.resumed.clear()
            self.cancels.clear()
            self.tokens_generated = self.tokens_streamed = 0
        self.fail_after = None
        self.drop_after = None

    def expire(self, response_id: str) -> None:
        with self.lock:
            response = self.responses.pop(response_id, None)
        if response is not None:
            with response.cond:
                response.stop = True
                response.cond.notify_all()

    def get_response(self, response_id: str) -> StoredResponse | None:
        with self.lock:
            return self.responses.get(response_id)

    # -- HTTP ----------------------------------------------------------------------------

    def post(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        parts = urlsplit(handler.path).path.rstrip("/").split("/")
        if parts[-1] == "responses":
            self.create(handler, body)
        elif parts[-1] == "cancel" and parts[-3] == "responses":
            self.cancel(handler, parts[-2])
        else:
            _error(handler, 404, f"No route {handler.path}")

    def get(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        parts = url.path.rstrip("/").split("/")
        if len(parts) < 2 or parts[-2] != "responses":
            _error(handler, 404, f"No route {handler.path}")
            return
        response = self.get_response(parts[-1])
        if response is None:
            _error(handler, 404, f"Response with id '{parts[-1]}' not found.")
            return
        query = parse_qs(url.query)
        if query.get("stream", ["false"])[0] != "true":
            _send_json(handler, 200, response.snapshot())
            return
        after = int(query["starting_after"][0]) if "starting_after" in query else None
        with self.lock:
            self.resumed.append(after)
        self.stream(handler, response, -1 if after is None else after)

    def create(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        if body.get("background") and body.get("store") is False:
            _error(handler, 400, "Background responses need store=true.")
            return
        response_id = f"resp_{next(self.ids)}_{uuid.uuid4().hex[:8]}"
        response = StoredResponse(response_id, body, self.server.generation)
        with self.lock:
            self.responses[response_id] = response
            self.created.append(body)
        threading.Thread(target=self.generate, args=(response,), daemon=True).start()
        if body.get("stream"):
            drop, self.drop_after = self.drop_after, None
            self.stream(handler, response, -1, drop)
            return
        if not response.background:
            with response.cond:
                while not response.done and not response.stop:
                    response.cond.wait(0.1)
        _send_json(handler, 200, response.snapshot())

    def cancel(self, handler: BaseHTTPRequestHandler, response_id: str) -> None:
        response = self.get_response(response_id)
        if response is None:
            _error(handler, 404, f"Response with id '{response_id}' not found.")
            return
        if not response.background:
            _error(handler, 400, "Only background responses can be cancelled.")
            return
        with self.lock:
            self.cancels.append(response_id)
        with response.cond:
            if not response.done:
                response.stop = True
                response.status = "cancelled"
                response.done = True
            response.cond.notify_all()
        _send_json(handler, 200, response.snapshot())

    def stream(
        self,
        handler: BaseHTTPRequestHandler,
        response: StoredResponse,
        after: int,
        drop_after: int | None = None,
    ) -> None:
        """Send the events after sequence number ``after``, live until the response ends.

        With ``drop_after``, the connection is closed mid-body after that many text tokens.
        """
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        position = after + 1
        try:
            while True:
                with response.cond:
                    while (position >= len(response.events) and not response.done
                           and not response.stop):
                        response.cond.wait(0.1)
                    batch = response.events[position:]
                    ended = response.done or response.stop
                for event in batch:
                    data = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
                    _write_chunk(handler, data)
                    if event["type"] == "response.output_text.delta":
                        with self.lock:
                            self.tokens_streamed += 1
                        if drop_after is not None:
                            drop_after -= 1
                            if drop_after <= 0:
                                handler.close_connection = True
                                return
                position += len(batch)
                if ended and position >= len(response.events):
                    break
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
            if not response.background:
                with response.cond:
                    response.stop = True
                    response.cond.notify_all()

    # -- generation ----------------------------------------------------------------------

    def plan(self, body: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
        raw = body.get("input")
        items: list[dict[str, Any]] = (
            [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw or [{}])
        )
        last = items[-1]
        if last.get("type") == "function_call_output":
            return [f"The result is {last.get('output')}."], []
        content = last.get("content")
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return self.server.reply(str(content or ""), bool(body.get("tools")))

    def emit(self, response: StoredResponse, event: dict[str, Any]) -> None:
        with response.cond:
            event["sequence_number"] = len(response.events)
            response.events.append(event)
            response.cond.notify_all()

    def pause(self, response: StoredResponse) -> bool:
        """Wait one token's time; False when the response must stop generating."""
        until = time.monotonic() + self.server.delay
        while True:
            if response.stop or self.server.generation != response.generation:
                return False
            remaining = until - time.monotonic()
            if remaining <= 0:
                return True
            time.sleep(min(0.01, remaining))

    def generate(self, response: StoredResponse) -> None:
        texts, calls = self.plan(response.body)
        self.emit(response, {"type": "response.created", "response": response.snapshot()})
        response.status = "in_progress"
        self.emit(response, {"type": "response.in_progress", "response": response.snapshot()})
        index = 0
        if (response.body.get("reasoning") or {}).get("summary"):
            item_id = f"rs_{uuid.uuid4().hex[:8]}"
            summary = "".join(self.reasoning_summary)
            item = {"id": item_id, "type": "reasoning", "summary": []}
            self.emit(response, {"type": "response.output_item.added", "output_index": index,
                                 "item": item})
            for delta in self.reasoning_summary:
                self.emit(response, {"type": "response.reasoning_summary_text.delta",
                                     "item_id": item_id, "output_index": index,
                                     "summary_index": 0, "delta": delta})
            self.emit(response, {"type": "response.reasoning_summary_text.done",
                                 "item_id": item_id, "output_index": index, "summary_index": 0,
                                 "text": summary})
            done = {**item, "summary": [{"type": "summary_text", "text": summary}]}
            response.output.append(done)
            self.emit(response, {"type": "response.output_item.done", "output_index": index,
                                 "item": done})
            index += 1
        if texts:
            item_id = f"msg_{uuid.uuid4().hex[:8]}"
            message = {"id": item_id, "type": "message", "role": "assistant",
                       "status": "in_progress", "content": []}
            self.emit(response, {"type": "response.output_item.added", "output_index": index,
                                 "item": message})
            part = {"type": "output_text", "text": "", "annotations": []}
            self.emit(response, {"type": "response.content_part.added", "item_id": item_id,
                                 "output_index": index, "content_index": 0, "part": part})
            written: list[str] = []
            for n, token in enumerate(texts):
                if not self.pause(response):
                    return self.stopped(response)
                if self.fail_after is not None and n >= self.fail_after:
                    return self.failed(response)
                written.append(token)
                with self.lock:
                    self.tokens_generated += 1
                response.tokens += 1
                self.emit(response, {"type": "response.output_text.delta", "item_id": item_id,
                                     "output_index": index, "content_index": 0,
                                     "delta": token, "logprobs": [], "obfuscation": "x" * n})
            text = "".join(written)
            self.emit(response, {"type": "response.output_text.done", "item_id": item_id,
                                 "output_index": index, "content_index": 0, "text": text,
                                 "logprobs": []})
            part = {**part, "text": text}
            self.emit(response, {"type": "response.content_part.done", "item_id": item_id,
                                 "output_index": index, "content_index": 0, "part": part})
            message = {**message, "status": "completed", "content": [part]}
            response.output.append(message)
            self.emit(response, {"type": "response.output_item.done", "output_index": index,
                                 "item": message})
            index += 1
        for n, call in enumerate(calls):
            if not self.pause(response):
                return self.stopped(response)
            item_id = f"fc_{uuid.uuid4().hex[:8]}"
            item = {"id": item_id, "type": "function_call", "call_id": f"call_{n}",
                    "name": call["name"], "arguments": "", "status": "in_progress"}
            self.emit(response, {"type": "response.output_item.added", "output_index": index,
                                 "item": item})
            args = call["arguments"]
            for piece in (args[: len(args) // 2], args[len(args) // 2:]):
                self.emit(response, {"type": "response.function_call_arguments.delta",
                                     "item_id": item_id, "output_index": index,
                                     "delta": piece})
            self.emit(response, {"type": "response.function_call_arguments.done",
                                 "item_id": item_id, "output_index": index, "arguments": args})
            item = {**item, "arguments": args, "status": "completed"}
            response.output.append(item)
            response.tokens += 1
            self.emit(response, {"type": "response.output_item.done", "output_index": index,
                                 "item": item})
            index += 1
        with response.cond:
            if response.stop:
                return self.stopped(response)
            response.status = "completed"
            response.done = True
            self.emit(response, {"type": "response.completed", "response": response.snapshot()})
        return None

    def stopped(self, response: StoredResponse) -> None:
        with response.cond:
            if response.status not in ("cancelled", "completed", "failed"):
                response.status = "cancelled"
            response.done = True
            response.cond.notify_all()

    def failed(self, response: StoredResponse) -> None:
        with response.cond:
            response.status = "failed"
            response.done = True
            snapshot = response.snapshot()
            snapshot["error"] = {"code": "server_error", "message": "The model failed."}
            self.emit(response, {"type": "response.failed", "response": snapshot})
