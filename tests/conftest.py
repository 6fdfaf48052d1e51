"""Fixtures for every folder of tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NODE_REPLICA = Path(__file__).resolve().parent.parent / "examples" / "node-replica"
NPM_CI_TIMEOUT_S = 300.0


@pytest.fixture(scope="session")
def node_replica() -> Path:
    """examples/node-replica with its dependencies installed from its lock file
    (`npm ci`, once: CI starts from a clean checkout, a second run reuses them)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the Node.js replica tests need node and npm on PATH (Node 18 or later)")
    installed = NODE_REPLICA / "node_modules" / ".package-lock.json"
    lock = NODE_REPLICA / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_REPLICA,
            check=True,
            timeout=NPM_CI_TIMEOUT_S,
            capture_output=True,
        )
    return NODE_REPLICA
