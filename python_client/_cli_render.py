"""What ``turnout status`` prints: one snapshot of an instance, as tables or JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from turnout.client import Client, ReplicaInfo
from turnout.config import DEFAULTS

REPLICA_STATES = ("RUNNING", "STARTING", "STOPPING", "FAILED")


@dataclass(frozen=True)
class Snapshot:
    """Everything ``turnout status`` shows, read from one instance."""

    controller_address: str
    controller_pid: int
    http_address: str
    log_dir: str
    endpoints: Mapping[str, Mapping[str, Any]]
    backends: Mapping[str, Mapping[str, Any]]
    replicas: Sequence[ReplicaInfo]
    # Autoscaled backends' status (Client.autoscaling_status), by backend.
    autoscaling: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Each endpoint's current or last rollout (``Rollout.info()``).
    rollouts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def read(cls, client: Client) -> Snapshot:
        backends = client.list_backends()
        autoscaling: dict[str, Mapping[str, Any]] = {}
        for name, config in backends.items():
            if config.get("autoscaling") is not None:
                status = client.autoscaling_status(name)
                if status is not None:
                    autoscaling[name] = status
        return cls(
            controller_address=client.controller_address,
            controller_pid=client.controller_pid,
            http_address=client.http_address,
            log_dir=client.log_dir,
            endpoints=client.list_endpoints(),
            backends=backends,
            replicas=sorted(client.list_replicas(), key=lambda r: (r.backend, r.replica_id)),
            autoscaling=autoscaling,
            rollouts=client.list_rollouts(),
        )

    def replica_counts(self, backend: str) -> dict[str, int]:
        counts = dict.fromkeys(REPLICA_STATES, 0)
        for replica in self.replicas:
            if replica.backend == backend:
                counts[replica.state] = counts.get(replica.state, 0) + 1
        return counts


def to_json(snapshot: Snapshot) -> str:
    """Stable JSON: sorted keys; replicas sorted by backend and id.

    Example::

        {"instance": {"controller_address": ..., "controller_pid": ..., "http_address": ...,
                      "log_dir": ...},
         "endpoints": {name: {"route", "methods", "traffic", "shadows", "request_timeout",
                              "serves_app", "cors"}},
         "backends": {name: {"config": {...}, "replicas": {"RUNNING": 2, ...},
                             "autoscaling": {...} (autoscaled backends only)}},
         "replicas": [{"replica_id", "backend", "state", "pid", "address", "error",
                       "cpus", "gpus", "log_path", "node", "restarts", "last_error"}],
         "rollouts": {endpoint: turnout.Rollout.info()}}
    """
    document = {
        "instance": {
            "controller_address": snapshot.controller_address,
            "controller_pid": snapshot.controller_pid,
            "http_address": snapshot.http_address,
            "log_dir": snapshot.log_dir,
        },
        "endpoints": snapshot.endpoints,
        "backends": {
            name: {
                "config": config,
                "replicas": snapshot.replica_counts(name),
                **(
                    {"autoscaling": snapshot.autoscaling[name]}
                    if name in snapshot.autoscaling
                    else {}
                ),
            }
            for name, config in snapshot.backends.items()
        },
        "replicas": [{**asdict(r), "cpus": list(r.cpus)} for r in snapshot.replicas],
        "rollouts": snapshot.rollouts,
    }
    return json.dumps(document, indent=2, sort_keys=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart.

    Example::

        print(table(["NAME", "ROUTE"], [["hello", "/hello"]]))
        # NAME   ROUTE
        # hello  /hello
    """
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in (headers, *rows)]  # fmt: skip
    return "\n".join(lines)


def _first_line(text: str) -> str:
    # A table row is one line; the whole error is in --json.
    lines = text.strip().splitlines()
    return lines[0] + (" ..." if len(lines) > 1 else "") if lines else ""


def _number(value: float) -> str:
    return f"{value:g}"


def _shares(shares: Mapping[str, float]) -> str:
    return ", ".join(f"{b} {_number(w)}" for b, w in sorted(shares.items())) or "-"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _config_text(config: Mapping[str, Any]) -> str:
    """The fields that differ from the defaults (num_replicas has its own column)."""
    defaults = DEFAULTS.to_dict()
    changed = [
        f"{key}={_number(value) if _is_number(value) else json.dumps(value)}"
        for key, value in sorted(config.items())
        if key not in ("num_replicas", "autoscaling")
        and value is not None
        and value != defaults.get(key)
    ]
    return " ".join(changed) or "defaults"


def _route_text(endpoint: Mapping[str, Any]) -> str:
    """The route; an app's, which serves the paths under it too, with "/*"."""
    route = endpoint["route"]
    if not route:
        return "-"
    return f"{route.rstrip('/')}/*" if endpoint.get("serves_app") else str(route)


def _cors_text(cors: Mapping[str, Any]) -> str:
    """The CORS options other than the origins, as key=value."""
    shown = [
        f"{key}={','.join(value) if isinstance(value, list) else json.dumps(value)}"
        for key, value in cors.items()
        if key != "allow_origins" and value not in ([], False)
    ]
    return " ".join(shown)


def to_text(snapshot: Snapshot) -> str:
    """Readable tables: the instance, endpoints, backends, replicas."""
    parts = [
        f"Turnout at {snapshot.controller_address} (controller pid {snapshot.controller_pid})\n"
        f"HTTP:  {snapshot.http_address}\nlogs:  {snapshot.log_dir}"
    ]
    endpoint_rows = [
        [
            name,
            _route_text(e),
            ",".join(e["methods"]),
            _shares(e["traffic"]),
            _shares(e["shadows"]),
            f"{_number(e['request_timeout'])}s" if e.get("request_timeout") else "-",
        ]
        for name, e in sorted(snapshot.endpoints.items())
    ]
    parts.append(
        table(["ENDPOINT", "ROUTE", "METHODS", "TRAFFIC", "SHADOWS", "TIMEOUT"], endpoint_rows)
        if endpoint_rows
        else "No endpoints."
    )
    cors_rows = [
        [name, ",".join(e["cors"]["allow_origins"]), _cors_text(e["cors"])]
        for name, e in sorted(snapshot.endpoints.items())
        if e.get("cors")
    ]
    if cors_rows:
        parts.append(table(["ENDPOINT", "CORS ORIGINS", "CORS OPTIONS"], cors_rows))
    backend_rows = []
    for name, config in sorted(snapshot.backends.items()):
        counts = snapshot.replica_counts(name)
        scaled = snapshot.autoscaling.get(name)
        wanted = config.get("num_replicas") if scaled is None else scaled["desired_replicas"]
        backend_rows.append(
            [
                name,
                str(wanted) + ("" if scaled is None else " (auto)"),
                *(str(counts[state]) for state in REPLICA_STATES),
                _config_text(config),
            ]
        )
    parts.append(
        table(["BACKEND", "WANTED", *REPLICA_STATES, "CONFIG"], backend_rows)
        if backend_rows
        else "No backends."
    )
    if snapshot.autoscaling:
        parts.append(_autoscaling_table(snapshot))
    # A NODE column once replicas run on more than the controller's machine.
    nodes = any(r.node for r in snapshot.replicas)
    replica_rows = [
        [
            r.replica_id,
            r.state,
            *([r.node or "-"] if nodes else []),
            str(r.pid or "-"),
            r.address or "-",
            str(r.restarts),
            _first_line(r.error),
            # Why it was last started again: still the news once it runs.
            _first_line(r.last_error) if r.last_error != r.error else "",
        ]
        for r in snapshot.replicas
    ]
    if replica_rows:
        header = [
            "REPLICA",
            "STATE",
            *(["NODE"] if nodes else []),
            "PID",
            "ADDRESS",
            "RESTARTS",
            "ERROR",
            "LAST ERROR",
        ]
        parts.append(table(header, replica_rows))
    if snapshot.rollouts:
        parts.append(rollout_table(snapshot.rollouts))
    return "\n\n".join(parts)


def _autoscaling_table(snapshot: Snapshot) -> str:
    """Autoscaled backends: bounds, load, what it asks for, the last decision."""
    rows = []
    for name, status in sorted(snapshot.autoscaling.items()):
        rules = snapshot.backends.get(name, {}).get("autoscaling") or {}
        at = status.get("last_decision_time")
        ago = f" ({time.time() - at:.0f}s ago)" if at else ""
        rows.append(
            [
                name,
                str(rules.get("min_replicas", 1)),
                str(rules.get("max_replicas", 1)),
                f"{status['load']:.2f}",
                str(status["wanted_replicas"]),
                str(status["desired_replicas"]),
                str(status["running_replicas"]),
                _first_line(status.get("last_reason") or "-") + ago,
            ]
        )
    headers = ["AUTOSCALED", "MIN", "MAX", "LOAD", "ASKS", "DESIRED", "RUNNING", "LAST DECISION"]
    return table(headers, rows)


def _window_text(window: Mapping[str, Any] | None) -> str:
    if not window:
        return "-"
    p99 = window.get("p99")
    latency = f" p99 {p99 * 1000:.3g}ms" if p99 is not None else ""
    return f"{window['requests']} req {window['errors']} err{latency}"


def rollout_table(rollouts: Mapping[str, Mapping[str, Any]]) -> str:
    """Each rollout's step, the numbers of its last window, and its verdict.

    Example::

        print(rollout_table(client.list_rollouts()))
        # ROLLOUT  FROM  TO  STATE     STEP       NEW                     OLD  VERDICT
        # model    v1    v2  stepping  2/4 (0.25) 52 req 0 err p99 12ms   ...  step 2 of 4 ...
    """
    rows = []
    for endpoint, r in sorted(rollouts.items()):
        steps = r["steps"]
        step = f"{r['step']}/{len(steps)}"
        if 0 < r["step"] <= len(steps):
            step += f" ({_number(steps[r['step'] - 1])})"
        rows.append(
            [
                endpoint,
                r["from_backend"],
                r["to_backend"],
                r["state"],
                step,
                _window_text(r.get("new")),
                _window_text(r.get("old")),
                _first_line(r["verdict"]),
            ]
        )
    header = ["ROLLOUT", "FROM", "TO", "STATE", "STEP", "NEW", "OLD", "VERDICT"]
    return table(header, rows)
