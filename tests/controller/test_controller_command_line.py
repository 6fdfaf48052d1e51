"""``python -m turnout.controller`` refuses bad options before it starts anything."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("value", ["0", "-1"])
def test_proxy_workers_below_one_is_refused(value: str) -> None:
    argv = [sys.executable, "-m", "turnout.controller", "--port", "0", "--http-port", "0"]
    result = subprocess.run(
        [*argv, "--proxy-workers", value], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"--proxy-workers must be >= 1, got {value}" in result.stderr
