#!/usr/bin/env python3
"""Developer entry point: ``python3 dev.py serve`` | ``test`` | ``lint`` | ``format``.

Creates ``.venv`` with the project and its dev dependencies on first use (and again
when pyproject.toml changes), then runs the command inside it. Needs only Python 3.11+.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import venv
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def ensure_venv() -> None:
    stamp = VENV / ".agch-installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    if not PY.exists():
        print("Creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    print("Installing agent-channels with its dev dependencies into .venv ...", flush=True)
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]"], check=True)
    stamp.write_text(digest)


def run(args: list[str], **env: str) -> int:
    return subprocess.run(args, cwd=ROOT, env={**os.environ, **env}, check=False).returncode


def reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=2):
            return True
    except OSError:
        return False


def serve(argv: list[str]) -> int:
    """The example project on embedded defaults (or DATABASE_URL / REDIS_URL when set).

    With DEBUG on (and so the example's public secret key), which the example allows only
    when asked: a deployment runs daphne with DJANGO_SECRET_KEY instead.
    """
    example = ROOT / "example_project"
    manage = [str(PY), str(example / "manage.py")]
    env = {**os.environ, "DJANGO_DEBUG": os.environ.get("DJANGO_DEBUG", "1")}
    if subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=False).returncode:
        return 1
    # admin / admin only in the embedded SQLite database, never in DATABASE_URL's.
    subprocess.run([*manage, "demo_superuser"], env=env, check=False)
    port = argv[0] if argv else "8000"
    login = "" if os.environ.get("DATABASE_URL") else "  (admin / admin)"
    print(f"Example project: http://127.0.0.1:{port}/{login}", flush=True)
    # daphne's runserver: the same ASGI server as production, plus static files and reload.
    return subprocess.run([*manage, "runserver", f"127.0.0.1:{port}"], cwd=example, env=env,
                          check=False).returncode


POSTGRES_URL = os.environ.get("AGCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AGCH_REDIS_URL", "redis://127.0.0.1:6379/5")

#: The backend pairs the suite runs on: the one place they are defined (tox runs them too).
PASSES = {
    "sqlite": ("SQLite + in-memory channel layer (the embedded default)",
               {"AGCH_DB": "sqlite", "AGCH_LAYER": "memory"}, []),
    "postgres": ("PostgreSQL + channels-redis",
                 {"AGCH_DB": "postgres", "AGCH_LAYER": "redis"},
                 [("PostgreSQL", POSTGRES_URL), ("Redis", REDIS_URL)]),
    # Only when asked for (AGCH_PASSES=pubsub): CI runs the live-wire tests on it.
    "pubsub": ("PostgreSQL + channels-redis's PUB/SUB layer",
               {"AGCH_DB": "postgres", "AGCH_LAYER": "redis", "AGCH_LAYER_BACKEND": "pubsub"},
               [("PostgreSQL", POSTGRES_URL), ("Redis", REDIS_URL)]),
}
DEFAULT_PASSES = ("sqlite", "postgres")


def run_passes(python: str, argv: list[str]) -> int:
    """Run pytest once per backend pair (AGCH_PASSES=sqlite,postgres picks some). Servers
    that are down skip their pass, or fail it under CI=true."""
    chosen = os.environ.get("AGCH_PASSES", ",".join(DEFAULT_PASSES)).split(",")
    failed = 0
    for number, key in enumerate(chosen, start=1):
        title, env, servers = PASSES[key]
        print(f"== pass {number}/{len(chosen)}: {title}", flush=True)
        down = [name for name, url in servers if not reachable(url)]
        if down and os.environ.get("CI") != "true":
            print(f"SKIPPED: {', '.join(down)} unreachable ({POSTGRES_URL}, {REDIS_URL}).",
                  flush=True)
            continue
        failed |= run([python, "-m", "pytest", *argv], **env)
    return 1 if failed else 0


def test(argv: list[str]) -> int:
    """The whole suite, once per backend pair: embedded (SQLite + in-memory layer) and on
    real servers (PostgreSQL + Redis)."""
    return run_passes(str(PY), argv)


def passes(argv: list[str]) -> int:
    """The passes of ``test`` with the current interpreter (tox's environments)."""
    return run_passes(sys.executable, argv)


def lint(argv: list[str]) -> int:
    failed = run([str(BIN / "ruff"), "check", "."])
    failed |= run([str(BIN / "ruff"), "format", "--check", "agent_channels"])
    failed |= run([str(BIN / "mypy")])
    failed |= run([str(BIN / "lint-imports")])
    failed |= run([str(BIN / "sphinx-build"), "-W", "--keep-going", "-q", "-b", "html", "docs",
                   "docs/_build/html"])
    return 1 if failed else 0


def format_code(argv: list[str]) -> int:
    """Fix what ruff can fix (imports, style) and format the package."""
    failed = run([str(BIN / "ruff"), "check", "--fix", "."])
    return failed | run([str(BIN / "ruff"), "format", "agent_channels"])


COMMANDS = {"serve": serve, "test": test, "lint": lint, "format": format_code, "passes": passes}
NEEDS_VENV = {"serve", "test", "lint", "format"}

if __name__ == "__main__":
    if sys.version_info < (3, 11):
        sys.exit("agent-channels needs Python 3.11 or newer.")
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python3 dev.py {{{'|'.join(COMMANDS)}}} [args]")
    if sys.argv[1] in NEEDS_VENV:
        ensure_venv()
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
