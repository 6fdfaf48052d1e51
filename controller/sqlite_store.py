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

from turnout.v1 import controller_pb2 as pb

from .store import BackendRecord, EndpointRecord

_SCHEMA = """
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
    request_timeout REAL NOT NULL
);
"""


class SqliteStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode; every change is its own explicit transaction.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._backends = {record.tag: record for record in self._load_backends()}
        self._endpoints = {record.name: record for record in self._load_endpoints()}

    def close(self) -> None:
        self._db.close()

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
            "SELECT name, route, methods, traffic, shadows, request_timeout "
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
            )
            for name, route, methods, traffic, shadows, timeout in rows
        ]

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
                "INSERT INTO endpoints (name, route, methods, traffic, shadows, request_timeout) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET route=excluded.route, "
                "methods=excluded.methods, traffic=excluded.traffic, shadows=excluded.shadows, "
                "request_timeout=excluded.request_timeout",
                (
                    record.name,
                    record.route,
                    json.dumps(record.methods),
                    json.dumps(record.traffic),
                    json.dumps(record.shadows),
                    record.request_timeout,
                ),
            )
        self._endpoints[record.name] = record

    def delete_endpoint(self, name: str) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM endpoints WHERE name = ?", (name,))
        self._endpoints.pop(name, None)
