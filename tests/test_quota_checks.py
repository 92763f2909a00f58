"""Checks E301 (USER_CHANNEL_PREFIX) and E302 (quota and throttle settings)."""

import pytest
from django.core.checks import Error
from django.test import override_settings

from agent_channels.checks import check_quotas, check_user_channel_prefix


@pytest.mark.parametrize("value", ["shared/", "{user_id", "{name}/", 42, ""])
def test_e301_a_prefix_must_differ_per_user(value):
    with override_settings(AGENT_CHANNELS={"USER_CHANNEL_PREFIX": value}):
        assert check_user_channel_prefix() == [
            Error(
                f"AGENT_CHANNELS['USER_CHANNEL_PREFIX'] = {value!r} does not give each user a "
                "namespace of their own.",
                hint='Use a string with "{user_id}" and no other fields, e.g. '
                '"user:{user_id}/", or None to let only operators create channels.',
                id="agent_channels.E301",
            )
        ]


@pytest.mark.parametrize("value", [None, "user:{user_id}/", "u{user_id}-"])
def test_e301_not_raised_for_per_user_prefixes_or_none(value):
    with override_settings(AGENT_CHANNELS={"USER_CHANNEL_PREFIX": value}):
        assert check_user_channel_prefix() == []


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("MAX_ACTIVE_RUNS_PER_USER", -1, "an integer >= 0, or None for no limit"),
        ("MAX_SOCKETS_PER_USER", "50", "an integer >= 0, or None for no limit"),
        ("HTTP_RUNS_RATE", None, "requests per second >= 0 (0 turns the throttle off)"),
        ("HTTP_MESSAGES_BURST", 0, "an integer >= 1"),
        ("MAX_PAGE_BYTES", None, "an integer >= 1"),
        ("MAX_QUEUED_RUNS_PER_CHANNEL", True, "an integer >= 0, or None for no limit"),
        ("SOCKET_SLOT_SECONDS", 0, "seconds > 0"),
    ],
)
def test_e302_bad_limits(name, value, expected):
    with override_settings(AGENT_CHANNELS={name: value}):
        assert check_quotas() == [
            Error(
                f"AGENT_CHANNELS[{name!r}] = {value!r} is not a valid limit.",
                hint=f"Give {expected}.",
                id="agent_channels.E302",
            )
        ]


def test_e302_the_throttle_cache_must_exist():
    with override_settings(AGENT_CHANNELS={"THROTTLE_CACHE": "nope"}):
        [error] = check_quotas()
    assert error.id == "agent_channels.E302" and "'nope' is not an alias in CACHES" in error.msg


def test_e302_not_raised_for_the_defaults_or_limits_turned_off():
    assert check_quotas() == []
    off = {"MAX_ACTIVE_RUNS_PER_USER": None, "MAX_QUEUED_RUNS_PER_CHANNEL": None,
           "MAX_SOCKETS_PER_USER": None, "HTTP_RUNS_RATE": 0, "HTTP_MESSAGES_RATE": 0.0}
    with override_settings(AGENT_CHANNELS=off):
        assert check_quotas() == []
