"""A small OpenAI-compatible chat completions server for the tests, on loopback.

It speaks the API's streaming format (``data: {chunk}\\n\\n`` server-sent events, tool
call deltas, a usage chunk when ``stream_options.include_usage`` is set, ``data: [DONE]``)
over chunked HTTP/1.1, so the real ``openai`` SDK runs end to end. It counts requests,
notices when a client closes a stream early, and can stream slowly.

Replies are decided from the request:
- tools offered, the last message from the user, and it contains "calculate X": a
  ``calculator`` tool call with ``{"expression": X}``;
- the last message is a tool result: ``"The result is <result>."``;
- otherwise ``reply_tokens`` words ``w0 w1 …`` (default: a short greeting).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LLMServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.completed = 0
        self.disconnects: list[int] = []  # chunks sent before each client went away
        self.delay = 0.0
        self.reply_tokens: int | None = None
        self.lock = threading.Lock()
        self.generation = 0  # bumped by reset(): streams of an earlier test stop quietly
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.requests.append(body)
                if not self.path.endswith("/chat/completions"):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                server.serve(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        with self.lock:
            self.generation += 1
            self.requests.clear()
            self.disconnects.clear()
            self.completed = 0
        self.delay = 0.0
        self.reply_tokens = None

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
        content = str(last.get("content") or "")
        match = re.search(r"calculate (.+)", content)
        if body.get("tools") and match:
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
