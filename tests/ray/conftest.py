"""The Ray suite's fixtures live in netns_cluster.py (type-checked there: mypy
sees one module named conftest only)."""

from netns_cluster import pytest_collection_modifyitems, ray_cluster, turnout_on_ray

__all__ = ["pytest_collection_modifyitems", "ray_cluster", "turnout_on_ray"]
