import pytest

from agent_channels.channel.names import (
    InvalidChannelName,
    control_group,
    event_group,
    validate_name,
)

VALID_GROUP = __import__("re").compile(r"^[A-Za-z0-9._-]{1,99}$")


@pytest.mark.parametrize(
    "name",
    ["a", "wf:123", "tenant/42/run 7", "日本語のチャンネル", "x" * 200, "emoji 🚀", "a.b-c_d"],
)
def test_valid_names_map_to_valid_groups(name):
    assert validate_name(name) == name
    for group in (event_group(name), control_group(name)):
        assert VALID_GROUP.match(group), group


@pytest.mark.parametrize(
    ("name", "reason"),
    [("", "1 to 200"), ("x" * 201, "1 to 200"), ("a\nb", "control"), ("tab\there", "control"),
     (None, "string"), (42, "string"), ("nul\x00", "control")],
)
def test_invalid_names_are_rejected_with_a_reason(name, reason):
    with pytest.raises(InvalidChannelName, match=reason):
        validate_name(name)


def test_names_that_sanitize_alike_get_different_groups():
    names = ["a/b", "a:b", "a b", "a_b", "A_b", "a/b ", "x" * 60 + "1", "x" * 60 + "2"]
    groups = {event_group(n) for n in names}
    assert len(groups) == len(names)
    assert event_group("a/b") != control_group("a/b")
