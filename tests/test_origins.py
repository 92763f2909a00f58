"""WebSocket Origin checks: a page from another site must not open a socket."""

import pytest
from django.test import override_settings

from agent_channels.ws.origins import origin_allowed


def scope(origin=None, *extra):
    headers = [(b"host", b"app.example.com"), *extra]
    if origin is not None:
        headers.append((b"origin", origin.encode("latin-1")))
    return {"type": "websocket", "headers": headers}


@override_settings(ALLOWED_HOSTS=["app.example.com", "127.0.0.1"], DEBUG=False)
@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("http://app.example.com", True),
        ("https://app.example.com:8443", True),
        ("https://APP.Example.COM", True),
        ("http://127.0.0.1:8000", True),
        ("https://evil.example.com", False),
        ("https://app.example.com.evil.org", False),
        ("https://example.com", False),
        ("http://localhost:8000", False),
    ],
)
def test_origin_host_must_be_in_allowed_hosts(origin, allowed):
    assert origin_allowed(scope(origin)) is allowed


@override_settings(ALLOWED_HOSTS=[".example.com"], DEBUG=False)
@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("https://example.com", True), ("https://app.example.com", True),
     ("https://a.b.example.com", True), ("https://notexample.com", False),
     ("https://example.com.evil.org", False)],
)
def test_wildcard_subdomains(origin, allowed):
    assert origin_allowed(scope(origin)) is allowed


@override_settings(ALLOWED_HOSTS=["*"], DEBUG=False)
def test_allowed_hosts_star_allows_any_web_origin_but_still_needs_one():
    assert origin_allowed(scope("https://anything.test"))
    assert not origin_allowed(scope(None))
    assert not origin_allowed(scope("null"))


@override_settings(ALLOWED_HOSTS=["app.example.com", "[::1]"], DEBUG=False)
@pytest.mark.parametrize(
    "origin",
    [None, "", "null", "garbage", "app.example.com", "//app.example.com", "ftp://app.example.com",
     "file:///etc/passwd", "chrome-extension://abcdef", "https://", "http://[::1",
     "http://[not-an-ip]", "https://app.example.com\x00.evil.org", "\xff\xfe"],
)
def test_missing_null_and_garbage_origins_are_denied(origin):
    assert origin_allowed(scope(origin)) is False


@override_settings(ALLOWED_HOSTS=["[::1]"], DEBUG=False)
def test_ipv6_literal_matches_its_bracketed_allowed_host():
    assert origin_allowed(scope("http://[::1]:8000"))
    assert not origin_allowed(scope("http://[::2]:8000"))


def test_origin_header_name_is_case_insensitive():
    with override_settings(ALLOWED_HOSTS=["app.example.com"]):
        assert origin_allowed({"headers": [(b"Origin", b"https://app.example.com")]})


@override_settings(
    ALLOWED_HOSTS=["app.example.com"],
    AGENT_CHANNELS={"ALLOWED_ORIGINS": ["https://app.example.com", "http://localhost:3000/"]},
)
@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("HTTPS://APP.EXAMPLE.COM", True),
        ("http://localhost:3000", True),
        # ALLOWED_ORIGINS compares whole origins: scheme and port count, ALLOWED_HOSTS does not apply.
        ("http://app.example.com", False),
        ("https://app.example.com:8443", False),
        ("http://localhost:3001", False),
        ("null", False),
    ],
)
def test_allowed_origins_overrides_allowed_hosts(origin, allowed):
    assert origin_allowed(scope(origin)) is allowed


@override_settings(AGENT_CHANNELS={"ALLOWED_ORIGINS": ["*"]}, ALLOWED_HOSTS=[])
def test_allowed_origins_star_allows_any_web_origin():
    assert origin_allowed(scope("https://elsewhere.test"))
    assert not origin_allowed(scope(None))
    assert not origin_allowed(scope("null"))


@override_settings(AGENT_CHANNELS={"ALLOWED_ORIGINS": []}, ALLOWED_HOSTS=["app.example.com"])
def test_empty_allowed_origins_denies_everything():
    assert not origin_allowed(scope("https://app.example.com"))


@override_settings(DEBUG=True, ALLOWED_HOSTS=[])
@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("http://localhost:8000", True), ("http://app.localhost", True), ("http://127.0.0.1:8000", True),
     ("http://[::1]:8000", True), ("https://example.com", False), ("http://192.168.1.5", False)],
)
def test_debug_with_empty_allowed_hosts_allows_localhost_like_django(origin, allowed):
    assert origin_allowed(scope(origin)) is allowed


@override_settings(DEBUG=False, ALLOWED_HOSTS=[])
def test_no_debug_and_no_allowed_hosts_denies_localhost():
    assert not origin_allowed(scope("http://localhost:8000"))
