"""The example project's safe defaults: DEBUG and its public key only when asked for, and the
admin/admin superuser only in the embedded SQLite database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection

from .procs import ROOT, child_env

PUBLIC_KEY = "example-project-insecure-key"
SHOW = (
    "import json, django.conf as c; s = c.settings; "
    "print(json.dumps([s.DEBUG, s.SECRET_KEY]))"
)


def example_settings(**env: str) -> subprocess.CompletedProcess[str]:
    """Import the example's settings in a fresh interpreter with exactly this environment."""
    environment = child_env(DJANGO_SETTINGS_MODULE="example_project.settings")
    for name in ("DJANGO_DEBUG", "DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL"):
        environment.pop(name, None)
    environment.update(env)
    return subprocess.run([sys.executable, "-c", SHOW], env=environment, capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT)


def test_without_the_environment_the_example_refuses_to_start():
    result = example_settings()
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "DJANGO_SECRET_KEY" in result.stderr


def test_debug_off_refuses_the_public_key():
    result = example_settings(DJANGO_SECRET_KEY=PUBLIC_KEY, DJANGO_DEBUG="0")
    assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr


def test_a_real_key_runs_with_debug_off():
    result = example_settings(DJANGO_SECRET_KEY="s" * 50)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [False, "s" * 50]


def test_debug_is_opt_in_and_only_then_the_public_key_is_used():
    # What `dev.py serve` sets (and what a developer may set on their own machine).
    result = example_settings(DJANGO_DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [True, PUBLIC_KEY]
    result = example_settings(DJANGO_DEBUG="1", DJANGO_SECRET_KEY="mine")
    assert json.loads(result.stdout) == [True, "mine"]


def test_dev_serve_asks_for_debug():
    source = (ROOT / "dev.py").read_text()
    serve = source[source.index("def serve("):source.index("POSTGRES_URL =")]
    assert '"DJANGO_DEBUG": os.environ.get("DJANGO_DEBUG", "1")' in serve
    assert "demo_superuser" in serve and "create_superuser" not in serve


@pytest.mark.django_db
def test_no_demo_superuser_outside_the_embedded_database(capsys):
    # The test database is not the example's db.sqlite3 (and on the PostgreSQL pass, not
    # SQLite at all): the command leaves it alone.
    call_command("demo_superuser")
    assert not get_user_model().objects.filter(username="admin").exists()
    assert "createsuperuser" in capsys.readouterr().out


@pytest.mark.django_db
def test_the_demo_superuser_in_the_embedded_database(monkeypatch):
    if connection.vendor != "sqlite":
        pytest.skip("the embedded database is SQLite")
    from demo.management.commands import demo_superuser

    # Pretend the test database is the example's own db.sqlite3 (the path itself is checked
    # in a fresh interpreter below).
    monkeypatch.setattr(demo_superuser, "embedded_path",
                        lambda: Path(connection.settings_dict["NAME"]))
    call_command("demo_superuser")
    call_command("demo_superuser")  # again: nothing to do
    assert get_user_model().objects.get(username="admin").is_superuser


def test_the_embedded_database_is_recognised_by_its_path(tmp_path):
    """``dev.py serve``'s own check, in a fresh interpreter with the example's settings."""
    code = (
        "import django; django.setup(); "
        "from demo.management.commands.demo_superuser import is_embedded_database as e; "
        "print(e())"
    )
    env = child_env(DJANGO_SETTINGS_MODULE="example_project.settings", DJANGO_DEBUG="1")
    env.pop("DATABASE_URL", None)
    embedded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60, check=False, cwd=ROOT)
    assert embedded.stdout.strip() == "True", embedded.stderr
    for url in (f"sqlite:///{tmp_path / 'other.sqlite3'}", "postgres://nobody@127.0.0.1:1/none"):
        other = subprocess.run([sys.executable, "-c", code], env={**env, "DATABASE_URL": url},
                               capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
        assert other.stdout.strip() == "False", other.stderr


LAYER = (
    "import json, django.conf as c; s = c.settings; "
    "print(json.dumps(s.CHANNEL_LAYERS['default']))"
)


@pytest.mark.parametrize(
    ("choice", "backend"),
    [
        (None, "channels_redis.pubsub.RedisPubSubChannelLayer"),
        ("core", "channels_redis.core.RedisChannelLayer"),
        ("pubsub", "channels_redis.pubsub.RedisPubSubChannelLayer"),
    ],
)
def test_redis_channel_layer_picks_the_core_or_the_pubsub_layer(choice, backend):
    environment = child_env(DJANGO_SETTINGS_MODULE="example_project.settings", DJANGO_DEBUG="1",
                            REDIS_URL="redis://127.0.0.1:6379/3")
    environment.pop("REDIS_CHANNEL_LAYER", None)
    if choice is not None:
        environment["REDIS_CHANNEL_LAYER"] = choice
    result = subprocess.run([sys.executable, "-c", LAYER], env=environment, capture_output=True,
                            text=True, timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    layer = json.loads(result.stdout)
    assert layer["BACKEND"] == backend
    # Either way the host outlives channels-redis's blocking reads (check E004).
    assert layer["CONFIG"]["hosts"] == [{"address": "redis://127.0.0.1:6379/3",
                                         "socket_timeout": 30}]
    assert ("capacity" in layer["CONFIG"]) == (backend.endswith("core.RedisChannelLayer"))


def test_the_pubsub_layer_follows_sentinels_too():
    from example_project.env import channel_layers

    layer = channel_layers(None, [("127.0.0.1", 26379)], "mymaster", pubsub=True)["default"]
    assert layer["BACKEND"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    (host,) = layer["CONFIG"]["hosts"]
    assert host["sentinels"] == [("127.0.0.1", 26379)] and host["master_name"] == "mymaster"


def test_an_unknown_redis_channel_layer_is_refused_by_name():
    environment = child_env(DJANGO_SETTINGS_MODULE="example_project.settings", DJANGO_DEBUG="1",
                            REDIS_URL="redis://127.0.0.1:6379/3", REDIS_CHANNEL_LAYER="pubusb")
    result = subprocess.run([sys.executable, "-c", LAYER], env=environment, capture_output=True,
                            text=True, timeout=60, check=False, cwd=ROOT)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and "'pubusb'" in result.stderr
