"""Desired state in a SQLite file: survives the controller.

WAL mode, ``synchronous=FULL``, one transaction per change, committed before
the change is acknowledged: a change the caller saw succeed is never lost,
and one it did not see is either fully there or not at all. Reads come from
an in-memory copy kept in step with the file (one controller writes it).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from turnout._internal.cors import CorsPolicy
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import rollout_pb2 as rpb

from .launchers.local import local_handle
from .store import LOCAL, BackendRecord, ChildRecord, EndpointRecord

# Children the controller started: what a restarted controller re-adopts.
_CHILDREN = """
CREATE TABLE IF NOT EXISTS children (
    name TEXT PRIMARY KEY,   -- "proxy" or a replica id
    kind TEXT NOT NULL,      -- "proxy" or "replica"
    launcher TEXT NOT NULL,  -- which launcher started it ("local")
    handle TEXT NOT NULL,    -- that launcher's way to find it again (opaque)
    address TEXT NOT NULL,
    log_path TEXT NOT NULL,
    backend TEXT NOT NULL,
    digest TEXT NOT NULL,
    resources TEXT NOT NULL, -- JSON {"cpus": [...], "gpus": [...], "gpu_share": x}
    capabilities TEXT NOT NULL  -- JSON, as the replica reported it
);
"""

_SCHEMA = (
    _CHILDREN
    + """
CREATE TABLE IF NOT EXISTS backends (
    tag TEXT PRIMARY KEY,
    spec BLOB NOT NULL,      -- turnout.v1.BackendSpec
    config BLOB NOT NULL,    -- turnout.v1.BackendConfig, every field set
    options BLOB NOT NULL    -- turnout.v1.ReplicaOptions
);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    methods TEXT NOT NULL,   -- JSON list
    traffic TEXT NOT NULL,   -- JSON {backend: weight}
    shadows TEXT NOT NULL,   -- JSON {backend: proportion}
    request_timeout REAL NOT NULL,
    cors TEXT NOT NULL DEFAULT ''  -- JSON CorsPolicy.to_dict(); '' = none
);
-- Each endpoint's current or last rollout. Files of earlier builds lack the
-- table; it is created when they are opened, empty.
CREATE TABLE IF NOT EXISTS rollouts (
    endpoint TEXT PRIMARY KEY,
    rollout BLOB NOT NULL    -- turnout.v1.Rollout
);
"""
)


class SqliteStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode; every change is its own explicit transaction.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self._db.executescript(_SCHEMA)
        self._add_columns()
        self._backends = {record.tag: record for record in self._load_backends()}
        self._endpoints = {record.name: record for record in self._load_endpoints()}
        self._children = {record.name: record for record in self._load_children()}
        self._rollouts = {
            endpoint: data
            for endpoint, data in self._db.execute(
                "SELECT endpoint, rollout FROM rollouts ORDER BY rowid"
            )
        }

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        """Bring a state file written by an earlier build up to this schema,
        in one transaction: its children were local processes, recorded by
        pid and start time, which become their launcher and handle."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(children)")}
        if "pid" not in columns:
            return  # a new file, or already migrated
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            rows = self._db.execute(
                "SELECT name, kind, pid, start_time, address, log_path, backend, digest, "
                "resources, capabilities FROM children ORDER BY rowid"
            ).fetchall()
            self._db.execute("DROP TABLE children")
            self._db.execute(_CHILDREN)
            self._db.executemany(
                "INSERT INTO children (name, kind, launcher, handle, address, log_path, backend, "
                "digest, resources, capabilities) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (name, kind, LOCAL, local_handle(pid, start), *rest)
                    for name, kind, pid, start, *rest in rows
                ],
            )

    def _add_columns(self) -> None:
        """Columns added since a state file may have been written: an older
        file's endpoints get them with their defaults (no CORS policy)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(endpoints)")}
        if "cors" not in columns:
            self._db.execute("ALTER TABLE endpoints ADD COLUMN cors TEXT NOT NULL DEFAULT ''")

    def _load_backends(self) -> list[BackendRecord]:
        rows = self._db.execute("SELECT tag, spec, config, options FROM backends ORDER BY rowid")
        return [
            BackendRecord(
                tag=tag,
                spec=pb.BackendSpec.FromString(spec),
                config=pb.BackendConfig.FromString(config),
                options=pb.ReplicaOptions.FromString(options),
            )
            for tag, spec, config, options in rows
        ]

    def _load_endpoints(self) -> list[EndpointRecord]:
        rows = self._db.execute(
            "SELECT name, route, methods, traffic, shadows, request_timeout, cors "
            "FROM endpoints ORDER BY rowid"
        )
        return [
            EndpointRecord(
                name=name,
                route=route,
                methods=json.loads(methods),
                traffic=json.loads(traffic),
                shadows=json.loads(shadows),
                request_timeout=timeout,
                cors=CorsPolicy.from_dict(json.loads(cors)) if cors else None,
            )
            for name, route, methods, traffic, shadows, timeout, cors in rows
        ]

    def _load_children(self) -> list[ChildRecord]:
        rows = self._db.execute(
            "SELECT name, kind, launcher, handle, address, log_path, backend, digest, resources, "
            "capabilities FROM children ORDER BY rowid"
        )
        records = []
        for (
            name,
            kind,
            launcher,
            handle,
            address,
            log_path,
            backend,
            digest,
            resources,
            capabilities,
        ) in rows:
            held = json.loads(resources)
            records.append(
                ChildRecord(
                    name=name,
                    kind=kind,
                    launcher=launcher,
                    handle=handle,
                    address=address,
                    log_path=log_path,
                    backend=backend,
                    digest=digest,
                    cpus=tuple(held.get("cpus", ())),
                    gpus=tuple(held.get("gpus", ())),
                    gpu_share=float(held.get("gpu_share", 0.0)),
                    capabilities=capabilities,
                )
            )
        return records

    def backends(self) -> dict[str, BackendRecord]:
        return dict(self._backends)

    def endpoints(self) -> dict[str, EndpointRecord]:
        return dict(self._endpoints)

    def put_backend(self, record: BackendRecord) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO backends (tag, spec, config, options) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(tag) DO UPDATE SET spec=excluded.spec, config=excluded.config, "
                "options=excluded.options",
                (
                    record.tag,
                    record.spec.SerializeToString(),
                    record.config.SerializeToString(),
                    record.options.SerializeToString(),
                ),
            )
        self._backends[record.tag] = record

    def delete_backend(self, tag: str) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM backends WHERE tag = ?", (tag,))
        self._backends.pop(tag, None)

    def put_endpoint(self, record: EndpointRecord) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO endpoints (name, route, methods, traffic, shadows, request_timeout, "
                "cors) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "route=excluded.route, methods=excluded.methods, traffic=excluded.traffic, "
                "shadows=excluded.shadows, request_timeout=excluded.request_timeout, "
                "cors=excluded.cors",
                (
                    record.name,
                    record.route,
                    json.dumps(record.methods),
                    json.dumps(record.traffic),
                    json.dumps(record.shadows),
                    record.request_timeout,
                    json.dumps(record.cors.to_dict()) if record.cors else "",
                ),
            )
        self._endpoints[record.name] = record

    def delete_endpoint(self, name: str) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM endpoints WHERE name = ?", (name,))
        self._endpoints.pop(name, None)

    def children(self) -> dict[str, ChildRecord]:
        return dict(self._children)

    def put_child(self, record: ChildRecord) -> None:
        resources = {
            "cpus": list(record.cpus),
            "gpus": list(record.gpus),
            "gpu_share": record.gpu_share,
        }
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO children (name, kind, launcher, handle, address, log_path, backend, "
                "digest, resources, capabilities) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO "
                "UPDATE SET kind=excluded.kind, launcher=excluded.launcher, "
                "handle=excluded.handle, address=excluded.address, "
                "log_path=excluded.log_path, backend=excluded.backend, "
                "digest=excluded.digest, resources=excluded.resources, "
                "capabilities=excluded.capabilities",
                (
                    record.name,
                    record.kind,
                    record.launcher,
                    record.handle,
                    record.address,
                    record.log_path,
                    record.backend,
                    record.digest,
                    json.dumps(resources),
                    record.capabilities,
                ),
            )
        self._children[record.name] = record

    def delete_child(self, name: str) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM children WHERE name = ?", (name,))
        self._children.pop(name, None)

    def rollouts(self) -> dict[str, rpb.Rollout]:
        return {name: rpb.Rollout.FromString(data) for name, data in self._rollouts.items()}

    def put_rollout(self, rollout: rpb.Rollout) -> None:
        data = rollout.SerializeToString()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO rollouts (endpoint, rollout) VALUES (?, ?) "
                "ON CONFLICT(endpoint) DO UPDATE SET rollout=excluded.rollout",
                (rollout.endpoint, data),
            )
        self._rollouts[rollout.endpoint] = data
