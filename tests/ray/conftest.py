"""Fixtures of the Ray suite: one real two-node Ray cluster per session
(``netns_cluster.RayCluster``), shared by every test of this folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from netns_cluster import RayCluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/ray/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    cluster = RayCluster().start()
    print(
        f"\nray cluster up in {cluster.start_s:.1f} s; "
        f"head {cluster.memory['head'] / 2**20:.0f} MiB, "
        f"worker {cluster.memory['worker'] / 2**20:.0f} MiB"
    )
    try:
        yield cluster
    finally:
        cluster.close()
