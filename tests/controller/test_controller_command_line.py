"""``python -m turnout.controller`` refuses bad options before it starts anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from turnout._cli_start import StartOptions, controller_argv
from turnout.controller.resources import default_max_replicas


@pytest.mark.parametrize("value", ["0", "-1"])
def test_proxy_workers_below_one_is_refused(value: str) -> None:
    argv = [sys.executable, "-m", "turnout.controller", "--port", "0", "--http-port", "0"]
    result = subprocess.run(
        [*argv, "--proxy-workers", value], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"--proxy-workers must be >= 1, got {value}" in result.stderr


def test_max_replicas_below_one_is_refused() -> None:
    argv = [sys.executable, "-m", "turnout.controller", "--port", "0", "--http-port", "0"]
    result = subprocess.run(
        [*argv, "--max-replicas", "0"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--max-replicas must be >= 1, got 0" in result.stderr


def test_turnout_start_passes_max_replicas_to_the_controller() -> None:
    options = StartOptions(Path("/srv/t"), Path("/srv/t/state.db"), max_replicas=5)
    argv = controller_argv(options, ready_fd=3)
    assert argv[argv.index("--max-replicas") + 1] == "5"
    assert "--max-replicas" not in controller_argv(
        StartOptions(Path("/srv/t"), Path("/srv/t/state.db")), ready_fd=3
    )


def test_turnout_start_passes_the_access_log_format_to_the_controller() -> None:
    options = StartOptions(Path("/srv/t"), Path("/srv/t/state.db"), access_log_format="json")
    argv = controller_argv(options, ready_fd=3)
    assert argv[argv.index("--access-log-format") + 1] == "json"
    assert "--access-log-format" not in controller_argv(
        StartOptions(Path("/srv/t"), Path("/srv/t/state.db")), ready_fd=3
    )


def test_an_unknown_access_log_format_is_refused() -> None:
    argv = [sys.executable, "-m", "turnout.controller", "--port", "0", "--http-port", "0"]
    result = subprocess.run(
        [*argv, "--access-log-format", "xml"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--access-log-format: invalid choice: 'xml'" in result.stderr


def test_the_default_capacity_follows_the_documented_formula() -> None:
    cpus = len(os.sched_getaffinity(0))
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert default_max_replicas() == max(16, min(4 * cpus, int(2 * memory_gib)))
