"""Running the Node clients under tests/js (the Durable Streams suite, the AG-UI client).

Node and npm come from the system; packages from the npm registry, pinned by
tests/js/package-lock.json and installed on first use. Without node a test skips with
the reason, except under CI=true, where it fails: CI must prove the protocols.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parent / "js"


def require_node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        message = "node and npm are needed for the JS client tests (apt-get install nodejs npm)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: failing instead of skipping)")
        pytest.skip(message)
    if not (JS / "node_modules" / ".package-lock.json").exists():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=JS,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode:
            pytest.fail(f"npm ci in tests/js failed:\n{done.stdout}\n{done.stderr}")
    return node


def run_node(
    args: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    require_node()
    return subprocess.run(
        args,
        cwd=JS,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
