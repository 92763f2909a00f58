"""Server-Sent Events from real daphne, read with a plain HTTP client and with a browser's EventSource."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from django.core import checks
from django.core.checks import Error
from django.test import Client, override_settings

from agent_channels import publish
from agent_channels.channel.log import EventDraft, append
from agent_channels.checks import check_sse_keepalive

from .procs import ROOT, child_env, free_port, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


class SSEDaphne:
    """daphne serving tests.sse_asgi (expose_transport) with tests.sse_settings."""

    def __init__(self) -> None:
        self.port = free_port()
        self.log_path = ROOT / f".daphne-{self.port}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "tests.sse_asgi:application",
            ],
            env=child_env(DJANGO_SETTINGS_MODULE="tests.sse_settings"),
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.proc)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


@pytest.fixture
def server():
    daphne = SSEDaphne()
    yield daphne
    daphne.stop()


@pytest.fixture
def cookie(django_user_model):
    user = django_user_model.objects.create_user("reader", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


class Stream:
    """An event stream read line by line over one HTTP connection."""

    def __init__(
        self, port: int, channel: str, query: str = "", timeout: float = 10, **headers: str
    ) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        path = f"/agent-channels/{quote(channel, safe='')}/events/{query}"
        self.conn.request(
            "GET",
            path,
            headers={
                "Accept": "text/event-stream",
                **{k.replace("_", "-"): v for k, v in headers.items()},
            },
        )
        self.response = self.conn.getresponse()

    def block(self) -> list[str]:
        lines = []
        while True:
            line = self.response.readline().decode()
            if line in ("\n", ""):
                if line == "" and not lines:
                    raise EOFError("the stream ended")
                return lines
            lines.append(line.rstrip("\n"))

    def events(self, count: int, deadline: float = 15) -> list[dict]:
        found: list[dict] = []
        end = time.monotonic() + deadline
        while len(found) < count and time.monotonic() < end:
            fields = dict(
                line.split(": ", 1)
                for line in self.block()
                if not line.startswith(":") and ": " in line
            )
            if "id" in fields:
                found.append(
                    {
                        "id": int(fields["id"]),
                        "event": fields["event"],
                        "data": json.loads(fields["data"]),
                    }
                )
        return found

    def close(self) -> None:
        self.conn.close()


def test_events_stream_with_ids_names_and_no_buffering_headers(server, cookie):
    append(
        "sse:a",
        [
            EventDraft("run.queued", {"agent": "x"}),
            EventDraft("message.delta", {"message_id": "m", "text": "héllo\nworld"}),
        ],
    )
    stream = Stream(server.port, "sse:a", Cookie=cookie)
    try:
        assert stream.response.status == 200
        assert stream.response.getheader("Content-Type").startswith("text/event-stream")
        assert stream.response.getheader("Cache-Control") == "no-cache"
        assert stream.response.getheader("X-Accel-Buffering") == "no"
        first, second = stream.events(2)
        assert (first["id"], first["event"]) == (1, "run.queued")
        assert second["data"]["data"] == {"message_id": "m", "text": "héllo\nworld"}
        assert second["data"]["seq"] == 2 and second["data"]["type"] == "event"
        publish("sse:a", "tick", {"n": 3})  # live: woken by the layer, or by the head check
        assert stream.events(1) == [{"id": 3, "event": "tick", "data": stream_frame(3)}]
    finally:
        stream.close()


def stream_frame(seq):
    from agent_channels.models import Event

    return json.loads(json.dumps(Event.objects.get(channel__name="sse:a", seq=seq).to_frame()))


def test_last_event_id_and_since_resume(server, cookie):
    append("sse:b", [EventDraft("tick", {"n": n}) for n in range(1, 6)])
    by_header = Stream(server.port, "sse:b", Cookie=cookie, Last_Event_ID="3")
    # A reconnecting EventSource keeps its URL's ?since= and adds Last-Event-ID: it wins.
    both = Stream(server.port, "sse:b", "?since=1", Cookie=cookie, Last_Event_ID="4")
    by_query = Stream(server.port, "sse:b", "?since=2", Cookie=cookie)
    try:
        assert [e["id"] for e in by_header.events(2)] == [4, 5]
        assert [e["id"] for e in both.events(1)] == [5]
        assert [e["id"] for e in by_query.events(3)] == [3, 4, 5]
    finally:
        for stream in (by_header, both, by_query):
            stream.close()


def test_a_quiet_stream_sends_keep_alive_comments(server, cookie):
    publish("sse:quiet", "tick")
    stream = Stream(server.port, "sse:quiet", "?since=1", Cookie=cookie)
    try:
        comments = []
        for _ in range(3):  # SSE_KEEPALIVE_SECONDS is 0.3 in tests.sse_settings
            comments += [line for line in stream.block() if line.startswith(":")]
        assert comments.count(": keep-alive") >= 2
    finally:
        stream.close()


def test_refusals_are_json_before_any_stream(server, cookie, django_user_model):
    publish("sse:private", "tick", owner=django_user_model.objects.create_user("owner"))
    eve = Client()
    eve.force_login(django_user_model.objects.create_user("eve"))
    cases = [
        ({}, 401, "unauthenticated", ""),
        ({"Cookie": f"sessionid={eve.cookies['sessionid'].value}"}, 403, "forbidden", ""),
        ({"Cookie": cookie, "Last_Event_ID": "x"}, 400, "invalid_parameter", ""),
        ({"Cookie": cookie}, 400, "since_ahead", "?since=9"),
    ]
    for headers, status, code, query in cases:
        stream = Stream(server.port, "sse:private", query, **headers)
        try:
            assert stream.response.status == status
            assert json.loads(stream.response.read())["code"] == code
        finally:
            stream.close()


def test_a_slow_reader_costs_the_server_a_bounded_buffer(server, cookie):
    pad = "x" * 4000
    for start in range(0, 8000, 500):  # 8,000 events of ~4 KB: 32 MB of stream
        append(
            "sse:big", [EventDraft("blob", {"n": n, "pad": pad}) for n in range(start, start + 500)]
        )
    warm = Stream(server.port, "sse:big", "?since=7000", Cookie=cookie)
    assert len(warm.events(1000)) == 1000  # code, connections and a batch's worth of memory
    warm.close()
    before = server.rss_kib()
    stream = Stream(server.port, "sse:big", Cookie=cookie, timeout=30)
    try:
        assert stream.response.status == 200
        time.sleep(3)  # not reading: without a bound the server would buffer all 32 MB
        grown = server.rss_kib() - before
        assert grown < 12 * 1024, f"daphne grew by {grown} KiB for one stalled reader"
        seqs = [event["id"] for event in stream.events(8000, deadline=90)]
        assert seqs == list(range(1, 8001)), "the stalled reader then gets everything, in order"
    finally:
        stream.close()


def test_a_browser_eventsource_follows_and_resumes(server, cookie):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from .test_browser import CHROMIUM, CHROMIUM_ARGS

    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    append("sse:browser", [EventDraft("tick", {"n": n}) for n in range(1, 4)])
    session = cookie.split("=", 1)[1]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context()
        context.add_cookies(
            [{"name": "sessionid", "value": session, "url": f"http://127.0.0.1:{server.port}"}]
        )
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/admin/login/")
        page.evaluate("""() => {
            window.got = [];
            window.source = new EventSource('/agent-channels/sse%3Abrowser/events/?since=1');
            window.source.addEventListener('tick', (e) => window.got.push(
                [Number(e.lastEventId), JSON.parse(e.data).data.n]));
        }""")
        page.wait_for_function("window.got.length >= 2", timeout=15_000)
        published = subprocess.run(
            [
                sys.executable,
                "-c",
                "import django; django.setup(); "
                "from agent_channels import publish; publish('sse:browser', 'tick', {'n': 4})",
            ],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert published.returncode == 0, published.stderr
        page.wait_for_function("window.got.length >= 3", timeout=15_000)
        assert page.evaluate("window.got") == [[2, 2], [3, 3], [4, 4]]
        browser.close()


@override_settings(AGENT_CHANNELS={"SSE_KEEPALIVE_SECONDS": 0})
def test_e005_a_keepalive_that_would_spin():
    assert check_sse_keepalive() == [
        Error(
            "AGENT_CHANNELS['SSE_KEEPALIVE_SECONDS'] must be a number of seconds from 0 "
            "to 3600 (exclusive of 0), not 0.",
            hint="Use 15 (the default), or a little less than your proxy's read timeout.",
            id="agent_channels.E005",
        )
    ]
    assert "agent_channels.E005" in [m.id for m in checks.run_checks()]


def test_e005_not_raised_for_the_default():
    assert check_sse_keepalive() == []
