"""The AGENT_CHANNELS dict: merged over the defaults, re-read when settings change."""

from django.conf import settings
from django.test import override_settings

from agent_channels import access
from agent_channels.conf import DEFAULTS, get_config


def test_defaults_are_merged_under_the_projects_settings():
    config = get_config()
    assert set(config) == set(DEFAULTS)
    assert config == {**DEFAULTS, **settings.AGENT_CHANNELS}
    with override_settings(AGENT_CHANNELS={"EXPECTED_EVENT_RATE": 5}):
        assert get_config() == {**DEFAULTS, "EXPECTED_EVENT_RATE": 5}


def test_override_settings_is_seen_at_once_and_reset_afterwards():
    before = get_config()
    with override_settings(AGENT_CHANNELS={"PAGE_SIZE": 7, "CLIENT_RATE": 1.5}):
        config = get_config()
        assert config["PAGE_SIZE"] == 7
        assert config["CLIENT_RATE"] == 1.5
        assert config["MAX_PAGE_SIZE"] == DEFAULTS["MAX_PAGE_SIZE"]
    assert get_config() == before
    assert get_config()["PAGE_SIZE"] == DEFAULTS["PAGE_SIZE"]


def test_unset_or_empty_setting_means_all_defaults():
    with override_settings(AGENT_CHANNELS={}):
        assert get_config() == DEFAULTS
    with override_settings(AGENT_CHANNELS=None):
        assert get_config() == DEFAULTS


def test_unknown_keys_are_kept_for_check_e002():
    with override_settings(AGENT_CHANNELS={"PAGESIZE": 5}):
        assert get_config()["PAGESIZE"] == 5
        assert get_config()["PAGE_SIZE"] == DEFAULTS["PAGE_SIZE"]


def test_result_is_cached_until_settings_change():
    assert get_config() is get_config()


class DenyAll(access.AccessPolicy):
    pass


def test_access_policy_instance_follows_the_setting():
    assert type(access.get_access_policy()) is access.OwnerAccessPolicy
    with override_settings(AGENT_CHANNELS={"ACCESS_POLICY": "tests.test_conf.DenyAll"}):
        assert type(access.get_access_policy()) is DenyAll
    assert type(access.get_access_policy()) is access.OwnerAccessPolicy


def test_defaults_are_documented():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "settings.rst").read_text(encoding="utf-8")
    missing = [key for key in DEFAULTS if f"``{key}``" not in text]
    assert not missing, f"docs/settings.rst does not document {missing}"
