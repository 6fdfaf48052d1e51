"""CI runs exactly the test command the README gives (issue 20: both install
chromium first), so a fresh machine that follows the README runs what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("**Run the tests**") :]
    block = re.search(r"```sh\n(.*?)\n```", section, re.DOTALL)
    assert block is not None, "README's 'Run the tests' has no sh block"
    return block.group(1).strip()


def test_ci_runs_the_readme_test_command() -> None:
    lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert lines[-1] == readme_test_command()


def test_the_test_command_installs_chromium_only_when_it_is_missing() -> None:
    command = readme_test_command()
    assert command.startswith(
        "(test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)) && "
    )
    assert command.endswith("pip install -e '.[dev]' && scripts/test")
