"""Which tests share a worker when the suite runs on several (scripts/test
runs it with pytest-xdist, ``--dist loadfile``).

Loaded as a plugin (pyproject's addopts), not as a conftest.py: a second
module named "conftest" on sys.path would shadow tests/e2e's for replicas
that unpickle e2e tests' code.

- Every test of a module runs on one worker, so a module-scoped fixture (an
  instance, a browser) starts once, as in a serial run.
- Every test under tests/ray runs on one worker: the machine has room for one
  two-node Ray cluster at a time (its network namespaces have fixed names
  and a lock), and the cluster is a session fixture, so a second worker
  would wait on the lock until the first one's whole session ended.

A scheduler of our own rather than ``xdist_group`` marks: with pytest 9,
xdist 3.8's ``loadgroup`` renames items through an attribute pytest no
longer reads, so its groups are ignored.
"""

from __future__ import annotations

from typing import Any

import pytest

RAY_GROUP = "tests/ray/"


def scope_of(nodeid: str) -> str:
    """The worker-sharing group of a test: its module, or the Ray suite."""
    path = nodeid.split("::", 1)[0].replace("\\", "/")
    return RAY_GROUP if path.startswith(RAY_GROUP) else path


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadfile":
        return None  # another mode asked for: xdist's own
    from xdist.scheduler import LoadFileScheduling

    # xdist ships no types: its scheduler is Any to mypy.
    class ModulesAndRaySuite(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ModulesAndRaySuite(config, log)
