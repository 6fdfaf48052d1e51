"""Both stores hold the same desired state; the SQLite one keeps it across opens."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from turnout._internal.cors import CorsPolicy
from turnout.controller.sqlite_store import SqliteStore
from turnout.controller.store import BackendRecord, EndpointRecord, MemoryStore, Store
from turnout.v1 import controller_pb2 as pb


def backend(tag: str, replicas: int = 1) -> BackendRecord:
    return BackendRecord(
        tag=tag,
        spec=pb.BackendSpec(import_path="pkg.mod:Model", init_args_json="[1]"),
        config=pb.BackendConfig(num_replicas=replicas, user_config_json='{"a": 1}'),
        options=pb.ReplicaOptions(num_cpus=1, env={"K": "V"}),
    )


def endpoint(name: str, **changes: object) -> EndpointRecord:
    record = EndpointRecord(
        name=name, route=f"/{name}", methods=["GET", "POST"], traffic={"a": 0.25, "b": 0.75}
    )
    for key, value in changes.items():
        setattr(record, key, value)
    return record


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return SqliteStore(tmp_path / "state.db")


def test_put_replace_delete(store: Store) -> None:
    store.put_backend(backend("a"))
    store.put_backend(backend("a", replicas=3))
    store.put_backend(backend("b"))
    store.put_endpoint(endpoint("e", shadows={"b": 0.5}, request_timeout=2.5))
    assert store.backends()["a"] == backend("a", replicas=3)
    assert list(store.backends()) == ["a", "b"]
    assert store.endpoints()["e"].shadows == {"b": 0.5}
    store.delete_backend("b")
    store.delete_endpoint("e")
    store.delete_endpoint("never-there")
    assert list(store.backends()) == ["a"] and store.endpoints() == {}


def test_sqlite_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state.db"
    first = SqliteStore(path)
    first.put_backend(backend("a", replicas=2))
    first.put_endpoint(endpoint("e", request_timeout=1.5))
    first.put_endpoint(endpoint("gone"))
    first.delete_endpoint("gone")
    # No close(): as after a kill -9, only what was committed counts.
    second = SqliteStore(path)
    assert second.backends() == {"a": backend("a", replicas=2)}
    assert second.endpoints() == {"e": endpoint("e", request_timeout=1.5)}
    first.close()
    second.close()


def test_an_endpoints_cors_policy_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    policy = CorsPolicy.from_dict(
        {"allow_origins": ["https://app.example"], "allow_credentials": True, "max_age": 60}
    )
    SqliteStore(path).put_endpoint(endpoint("e", cors=policy))
    assert SqliteStore(path).endpoints()["e"].cors == policy


def test_a_state_file_from_before_cors_opens_with_no_policy(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        # The endpoints table as builds before CORS wrote it.
        db.execute(
            "CREATE TABLE endpoints (name TEXT PRIMARY KEY, route TEXT NOT NULL, "
            "methods TEXT NOT NULL, traffic TEXT NOT NULL, shadows TEXT NOT NULL, "
            "request_timeout REAL NOT NULL)"
        )
        db.execute(
            "INSERT INTO endpoints VALUES ('old', '/old', '[\"GET\"]', '{\"a\": 1.0}', '{}', 0)"
        )
    db.close()
    store = SqliteStore(path)
    assert store.endpoints()["old"] == EndpointRecord(
        name="old", route="/old", methods=["GET"], traffic={"a": 1.0}
    )
    policy = CorsPolicy.from_dict({"allow_origins": ["*"]})
    store.put_endpoint(EndpointRecord(name="old", route="/old", methods=["GET"], cors=policy))
    assert SqliteStore(path).endpoints()["old"].cors == policy


def test_rollouts_are_kept_per_endpoint_across_reopening(tmp_path: Path) -> None:
    from turnout.v1 import rollout_pb2 as rpb

    path = tmp_path / "state.db"
    first = SqliteStore(path)
    first.put_rollout(rpb.Rollout(endpoint="e", to_backend="v2", current_step=1))
    first.put_rollout(rpb.Rollout(endpoint="e", to_backend="v2", current_step=2))
    first.put_rollout(rpb.Rollout(endpoint="f", to_backend="v3"))
    second = SqliteStore(path)  # no close(): as after a SIGKILL
    assert {name: r.current_step for name, r in second.rollouts().items()} == {"e": 2, "f": 0}
    first.close()
    second.close()


def test_a_state_file_of_a_build_without_rollouts_opens_with_none(tmp_path: Path) -> None:
    import sqlite3

    from turnout.v1 import rollout_pb2 as rpb

    path = tmp_path / "state.db"
    SqliteStore(path).put_backend(backend("a"))
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE rollouts")  # as the earlier build wrote it
    db.close()
    store = SqliteStore(path)
    assert store.rollouts() == {} and list(store.backends()) == ["a"]
    store.put_rollout(rpb.Rollout(endpoint="e"))
    assert list(SqliteStore(path).rollouts()) == ["e"]
    store.close()
