"""The suite's own layout: what would stop pytest from collecting all of it."""

from __future__ import annotations

import collections
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_two_test_modules_share_a_name() -> None:
    # The test folders are not packages, so pytest imports each module by its
    # base name: a second tests/*/test_x.py is "import file mismatch" and the
    # whole run stops at collection (it happened with test_cors.py and
    # test_web_apps.py, unit and e2e).
    by_name = collections.defaultdict(list)
    for module in TESTS.rglob("*.py"):
        if ".venv" not in module.parts and "node_modules" not in module.parts:
            by_name[module.name].append(str(module.relative_to(TESTS)))
    shared = {
        name: paths for name, paths in by_name.items() if len(paths) > 1 and name != "conftest.py"
    }
    assert not shared, f"rename one of each: {shared}"
