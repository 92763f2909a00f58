"""Property tests for the HTTP endpoints: odd channel names, queries and bodies get a JSON
answer with a code, never a 500 (Django's test client re-raises any exception a view lets
out, so a crash fails the example that caused it)."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from agent_channels import publish
from agent_channels.models import Event, Run

pytestmark = pytest.mark.django_db(transaction=True)

# Every example is a request against the test database: counts stay modest.
FUZZ = settings(
    max_examples=60, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

any_char = st.characters(exclude_categories=())
any_text = st.text(any_char, max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | any_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3),
    max_leaves=12,
)
#: JSON any store keeps: what a well-behaved client sends.
plain_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=12,
)


def mostly(good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three examples in four from ``good``, so most get past the first check."""
    return st.integers(0, 3).flatmap(lambda i: odd if i == 0 else good)


#: Channel names as they reach the URL: mostly plausible, often not, sometimes not UTF-8.
name_text = st.one_of(
    st.sampled_from(["fuzz", "run:1/a b", "a/runs/b", "x/events", "%", "..", "a\nb", "ä/ö", " "]),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
    st.text("abc:/._-~ %\t", min_size=1, max_size=300),
)
name_paths = mostly(
    st.sampled_from(["fuzz", "fuzz-run", "fuzz-msg", "run%3A1%2Fa%20b"]),
    name_text.map(lambda n: quote(n, safe=""))
    | st.binary(min_size=1, max_size=40).map(lambda b: quote(b, safe="")),
)
#: Query values: numbers at the edges and everything that merely looks like one.
query_values = st.one_of(
    st.integers(-5, 2**70).map(str),
    st.sampled_from(["", " 1", "1 ", "+1", "-0", "0x10", "1e3", "1.0", "²", "١٢", "9" * 19, "NaN"]),
    any_text,
)
query_parts = mostly(
    st.integers(0, 5).map(str),
    st.binary(max_size=30).map(lambda b: quote(b, safe=""))
    | query_values.map(lambda v: quote(v.encode("utf-8", "surrogatepass"), safe="")),
)
raw_bodies = st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v, allow_nan=True).encode())
run_bodies = mostly(
    st.fixed_dictionaries(
        {"agent": mostly(st.just("echo"), st.sampled_from(["nope", ""]) | json_values)},
        optional={"input": mostly(plain_json, json_values), "on_active": mostly(st.sampled_from(
            ["reject", "enqueue", "interrupt"]), st.just("bogus") | json_values), "extra": json_values},
    ).map(lambda d: json.dumps(d, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    raw_bodies,
)
message_bodies = mostly(
    st.fixed_dictionaries(
        {"type": mostly(st.sampled_from(["input", "interrupt", "cancel", "ping", "x"]), json_values)},
        optional={"id": mostly(st.none() | st.integers(0, 99) | st.text(max_size=8), json_values),
                  "data": mostly(plain_json, json_values)},
    ).map(lambda d: json.dumps(d, allow_nan=True).encode()),
    raw_bodies,
)


@pytest.fixture
def staff_client(django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_user("fuzzer", is_staff=True, is_superuser=True))
    return client


def answer(response: Any, allowed: set[int]) -> dict[str, Any]:
    """The contract: an expected status, JSON, and a code on every error."""
    assert response.status_code in allowed, (response.status_code, response.content[:300])
    assert response["Content-Type"] == "application/json", response.content[:300]
    body: dict[str, Any] = json.loads(response.content)
    # Shown by --hypothesis-show-statistics: how many examples got past each check.
    event(f"{response.status_code} {body.get('code', '')}")
    if response.status_code >= 400:
        assert body["type"] == "error" and body["code"] and body["message"], body
    return body


@FUZZ
@given(name=name_paths, since=st.none() | query_parts, limit=st.none() | query_parts,
       junk=st.none() | query_parts)
@example(name="fuzz", since="-1", limit=None, junk=None)
@example(name="fuzz", since="%FF", limit="%C0%AF", junk=None)
@example(name="%FF%FE", since=None, limit=None, junk=None)
@example(name="fuzz", since="9" * 19, limit="0", junk="since=1")
def test_events_queries(staff_client: Client, name: str, since: str | None, limit: str | None,
                        junk: str | None) -> None:
    if not Event.objects.filter(channel__name="fuzz").exists():
        for i in range(3):
            publish("fuzz", "tick", {"i": i})
    params = [f"since={since}" if since is not None else "", f"limit={limit}" if limit is not None else "",
              junk or ""]
    query = "&".join(p for p in params if p)
    response = staff_client.get(f"/agent-channels/{name}/events/" + (f"?{query}" if query else ""))
    if response.status_code == 404 and response["Content-Type"].startswith("text/html"):
        # Only the URL resolver answers in HTML: a path no route matches is not the app's.
        assert not name or "%2F" in name.upper() or "/" in name
        return
    body = answer(response, {200, 400, 410})
    if response.status_code == 200:
        seqs = [e["seq"] for e in body["events"]]
        assert seqs == sorted(set(seqs)) and all(s > int(since or 0) for s in seqs)
        assert body["last_seq"] <= body["head_seq"]


@FUZZ
@given(name=name_paths, body=run_bodies, content_type=st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded"]))
@example(name="fuzz-run", body=b'{"agent": "echo", "input": "\\u0000"}', content_type="application/json")
@example(name="fuzz-run", body=b'{"agent": "echo", "input": 1e400}', content_type="application/json")
@example(name="fuzz-run", body=b'{"agent": "echo", "input": "\\udc80"}', content_type="application/json")
@example(name="fuzz-run", body=b"\xff\xfe", content_type="application/json")
@example(name="fuzz-run", body=b"[" * 50_000, content_type="application/json")
def test_run_creation_bodies(staff_client: Client, inprocess_runtime: None, name: str, body: bytes,
                             content_type: str) -> None:
    response = staff_client.post(f"/agent-channels/{name}/runs/", body, content_type=content_type)
    if response.status_code == 404 and response["Content-Type"].startswith("text/html"):
        return
    out = answer(response, {201, 400, 409})
    if response.status_code == 201:
        run = Run.objects.get(pk=out["id"])
        detail = staff_client.get(f"/agent-channels/{name}/runs/{run.pk}/")
        assert answer(detail, {200})["id"] == str(run.pk)


@FUZZ
@given(name=name_paths, body=message_bodies)
@example(name="fuzz-msg", body=b'{"type": "input", "data": {"\\u0000": 1}}')
@example(name="fuzz-msg", body=b'{"type": "input", "data": "\\ud800x"}')
@example(name="fuzz-msg", body=b'{"type": "input", "data": [1e999]}')
@example(name="fuzz-msg", body=b'{"type": "cancel", "id": 9007199254740993}')
def test_message_bodies(staff_client: Client, name: str, body: bytes) -> None:
    before = Event.objects.count()
    response = staff_client.post(f"/agent-channels/{name}/messages/", body,
                                 content_type="application/json")
    if response.status_code == 404 and response["Content-Type"].startswith("text/html"):
        return
    out = answer(response, {202, 400})
    if response.status_code == 202:
        # Accepted means stored: one new row, at the seq the ack names.
        assert Event.objects.count() == before + 1
        assert Event.objects.order_by("-id").values_list("seq", flat=True)[0] == out["seq"]
    else:
        assert Event.objects.count() == before


@FUZZ
@given(name=name_paths, run=st.one_of(st.uuids().map(str), st.text("0123456789abcdefABCDEF-", min_size=32,
                                                                    max_size=36)))
def test_run_detail_ids(staff_client: Client, name: str, run: str) -> None:
    response = staff_client.get(f"/agent-channels/{name}/runs/{run}/")
    if response.status_code == 404 and response["Content-Type"].startswith("text/html"):
        return
    answer(response, {400, 404})


@FUZZ
@given(method=st.sampled_from(["put", "patch", "delete", "options"]),
       endpoint=st.sampled_from(["events", "runs", "messages", f"runs/{uuid.uuid4()}"]))
def test_other_methods(staff_client: Client, method: str, endpoint: str) -> None:
    response = getattr(staff_client, method)(f"/agent-channels/fuzz/{endpoint}/")
    # require_POST/require_GET answer 405 with an empty body; the events view in JSON.
    assert response.status_code == 405
    assert response["Allow"]
