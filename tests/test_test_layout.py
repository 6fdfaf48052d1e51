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


def test_the_ray_suite_shares_one_worker_and_other_modules_keep_theirs() -> None:
    import xdist_groups

    ray_modules = sorted((TESTS / "ray").glob("test_*.py"))
    assert len(ray_modules) > 1
    scopes = {xdist_groups.scope_of(f"tests/ray/{m.name}::test_x") for m in ray_modules}
    assert scopes == {xdist_groups.RAY_GROUP}
    assert xdist_groups.scope_of("tests/e2e/test_cli.py::test_a[1]") == "tests/e2e/test_cli.py"
