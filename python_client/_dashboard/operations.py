"""What the dashboard's JSON API does, without a socket: read the instance
through a ``turnout.Client`` (the operator's credentials), and change it
through the same client calls, so every change gets the API's own checks
and errors."""

from __future__ import annotations

import dataclasses
import time
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from turnout._internal import autoscaling as autoscaling_fields
from turnout.client import Client, ReplicaInfo
from turnout.errors import InvalidArgumentError, NotFoundError

from .history import SAMPLE_S, History

# The window of the figures shown beside each endpoint (the charts have theirs).
SUMMARY_WINDOW_S = 60.0
LOG_LINES = 100
MAX_LOG_LINES = 1000
# One read of a log: the tail's 100 lines, or what two seconds add, fit well.
LOG_BYTES = 256 * 1024
_METRICS_TIMEOUT_S = 2.0
# Pages poll every second: several open ones share one read of the instance.
OVERVIEW_TTL_S = 0.5
_IN_FLIGHT = "turnout_replica_in_flight_requests"


def _field(body: object, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(body, dict):
        raise TypeError(f"the request body must be a JSON object, got {type(body).__name__}")
    if name not in body:
        raise InvalidArgumentError(f"the request body needs {name!r} ({what})")
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return value


def complete_lines(data: bytes, end: int, tail: bool, limit: int) -> tuple[list[str], int]:
    """The complete lines of ``data`` (the log's bytes up to offset ``end``)
    and the offset to go on from. In a ``tail`` read that began mid-log the
    first line may be cut: it is dropped. A last line without its line end
    yet is left for the next read, unless it fills a whole read (``limit``
    bytes): it might never end.

    Example::

        complete_lines(b"lo\\nnext\\npart", 15, True, 4096)   # (["next"], 11)
    """
    body = data
    if tail and end > len(data):
        cut = data.find(b"\n")
        body = b"" if cut < 0 else data[cut + 1 :]
    last = body.rfind(b"\n")
    if last < 0 and len(data) < limit:
        return [], end - len(body)
    if last >= 0:
        end -= len(body) - last - 1
        body = body[: last + 1]
    return body.decode("utf-8", errors="replace").splitlines(), end


def _replica(replica: ReplicaInfo, in_flight: dict[str, int] | None) -> dict[str, Any]:
    return {
        "id": replica.replica_id,
        "state": replica.state,
        "node": replica.node,
        "pid": replica.pid,
        "address": replica.address,
        # None: the proxy's count could not be read.
        "in_flight": None if in_flight is None else in_flight.get(replica.replica_id, 0),
        "restarts": replica.restarts,
        "error": replica.error,
        "last_error": replica.last_error,
    }


class Operations:
    """The dashboard's reads and changes of one instance.

    Example::

        operations = Operations(turnout.Client("127.0.0.1:50051"))
        operations.overview()["endpoints"]
        operations.set_traffic({"endpoint": "model", "traffic": {"v1": 0.9, "v2": 0.1}})
    """

    def __init__(self, client: Client, history: History | None = None) -> None:
        self.client = client
        self.history = history or History()
        self._overview: tuple[float, dict[str, Any]] | None = None

    # ---- reading -------------------------------------------------------------

    def sample(self) -> None:
        """Add one point to every endpoint's charts (called every ``SAMPLE_S``)."""
        stats = self.client.endpoint_stats(window=SAMPLE_S)
        endpoints = self.client.list_endpoints()
        self.history.add(time.time(), SAMPLE_S, stats, endpoints)

    def in_flight(self) -> dict[str, int] | None:
        """Requests the HTTP proxy has sent to each replica and not had answered
        (its /-/metrics), None when the proxy cannot be read."""
        address = self.client.http_address
        if not address:
            return None
        request = urllib.request.Request(f"{address}/-/metrics")
        if self.client.token:
            # The proxy may protect its system paths with the admin token.
            request.add_header("Authorization", f"Bearer {self.client.token}")
        try:
            with urllib.request.urlopen(request, timeout=_METRICS_TIMEOUT_S) as reply:
                text = reply.read().decode("utf-8", errors="replace")
        except (OSError, urllib.error.URLError, ValueError):
            return None
        counts: dict[str, int] = {}
        for family in text_string_to_metric_families(text):
            if family.name != _IN_FLIGHT:
                continue
            for sample in family.samples:
                replica = sample.labels.get("replica", "")
                counts[replica] = counts.get(replica, 0) + int(sample.value)
        return counts

    def overview(self) -> dict[str, Any]:
        """Everything the page shows, in one answer (the page polls it); the
        same answer for ``OVERVIEW_TTL_S`` after it was read, unless a change
        was made through this object meanwhile."""
        now = time.monotonic()
        cached = self._overview
        if cached is not None and now - cached[0] < OVERVIEW_TTL_S:
            return cached[1]
        answer = self._read_overview()
        self._overview = (now, answer)
        return answer

    def _read_overview(self) -> dict[str, Any]:
        client = self.client
        endpoints = client.list_endpoints()
        stats = client.endpoint_stats(window=SUMMARY_WINDOW_S)
        backends = client.list_backends()
        replicas = client.list_replicas()
        rollouts = client.list_rollouts()
        in_flight = self.in_flight()
        # A backend being created has replicas before ListBackends shows it:
        # it is shown once it is there.
        by_backend: dict[str, list[dict[str, Any]]] = {tag: [] for tag in backends}
        for replica in replicas:
            if replica.backend in by_backend:
                by_backend[replica.backend].append(_replica(replica, in_flight))
        endpoint_list = []
        for name, endpoint in sorted(endpoints.items()):
            counted = stats.get(name, {})
            shadow_counts = counted.get("shadows", {})
            recent = counted.get("recent", {})
            endpoint_list.append(
                {
                    "name": name,
                    "route": endpoint["route"],
                    "methods": endpoint["methods"],
                    "traffic": endpoint["traffic"],
                    "shadows": [
                        {"backend": backend, "proportion": proportion}
                        | shadow_counts.get(backend, {})
                        for backend, proportion in sorted(endpoint["shadows"].items())
                    ],
                    "recent": {
                        key: recent.get(key)
                        for key in ("window_s", "requests", "errors", "p50", "p95", "p99")
                    },
                    "rollout": rollouts.get(name),
                }
            )
        return {
            "instance": {
                "controller": client.controller_address,
                "http": client.http_address,
                "time": time.time(),
                "sample_s": SAMPLE_S,
            },
            "endpoints": endpoint_list,
            "backends": [
                {
                    "tag": tag,
                    "config": backends[tag],
                    "replicas": by_backend[tag],
                    "autoscaling": self._autoscaling(tag, backends[tag]),
                }
                for tag in sorted(by_backend)
            ],
            "history": self.history.series(endpoints),
        }

    def _autoscaling(self, tag: str, config: dict[str, Any]) -> dict[str, Any] | None:
        """An autoscaled backend's rules (every default filled in) and where
        it stands; None for a fixed ``num_replicas``."""
        if not config.get("autoscaling"):
            return None
        try:
            status = self.client.autoscaling_status(tag)
        except NotFoundError:  # deleted since ListBackends
            return None
        if status is None:
            return None
        policy = autoscaling_fields.policy(autoscaling_fields.from_dict(config["autoscaling"]))
        return {"policy": dataclasses.asdict(policy)} | status

    def log(
        self, replica_id: str, lines: int = LOG_LINES, offset: int | None = None
    ) -> dict[str, Any]:
        """A replica's log, read by the controller where the replica runs (a
        Ray node included): its last ``lines`` complete lines, or, with
        ``offset`` (a previous answer's ``next_offset``), the complete lines
        written since. ``reset`` says the log started again (rotated): the
        lines replace what was shown. A replica that does not run has a
        ``note`` instead."""
        if not 1 <= lines <= MAX_LOG_LINES:
            raise InvalidArgumentError(f"lines must be 1..{MAX_LOG_LINES}, got {lines}")
        if offset is not None and offset < 0:
            raise InvalidArgumentError(f"offset must be >= 0, got {offset}")
        for replica in self.client.list_replicas():
            if replica.replica_id == replica_id:
                break
        else:
            raise NotFoundError(f"no replica {replica_id!r}")
        try:
            chunk = self.client.replica_log(replica_id, LOG_BYTES, offset)
        except NotFoundError:
            # Starting again, or failed: the controller reads running
            # replicas' logs (and names no file for the others).
            return {
                "replica": replica_id,
                "path": replica.log_path,
                "lines": [],
                "next_offset": 0,
                "reset": True,
                "note": f"{replica_id} is {replica.state.lower()}: its log shows here "
                "once it runs (the controller reads the logs of running replicas)",
            }
        start = chunk.next_offset - len(chunk.data)
        text, next_offset = complete_lines(chunk.data, chunk.next_offset, offset is None, LOG_BYTES)
        if offset is None:
            text = text[-lines:]
        return {
            "replica": replica_id,
            "path": replica.log_path,
            "lines": text,
            "next_offset": next_offset,
            "reset": offset is not None and start != offset,
            "note": "",
        }

    # ---- changing ------------------------------------------------------------

    def set_traffic(self, body: object) -> dict[str, Any]:
        """``{"endpoint": name, "traffic": {backend: weight}}``: ``set_traffic``."""
        endpoint = _field(body, "endpoint", str, "an endpoint's name")
        traffic = _field(body, "traffic", dict, "an object of backend: weight")
        self.client.set_traffic(endpoint, traffic)
        self._overview = None
        now = self.client.list_endpoints().get(endpoint, {})
        return {"endpoint": endpoint, "traffic": now.get("traffic")}

    def scale(self, body: object) -> dict[str, Any]:
        """``{"backend": tag, "num_replicas": n}``: ``update_backend_config``;
        answers once the replicas are there."""
        backend = _field(body, "backend", str, "a backend's tag")
        count = _field(body, "num_replicas", int, "an integer")
        self.client.update_backend_config(backend, {"num_replicas": count})
        self._overview = None
        return {"backend": backend, "num_replicas": count}

    def remove_shadow(self, body: object) -> dict[str, Any]:
        """``{"endpoint": name, "backend": tag}``: ``shadow_traffic(..., 0)``."""
        endpoint = _field(body, "endpoint", str, "an endpoint's name")
        backend = _field(body, "backend", str, "a backend's tag")
        shadows = self.client.list_endpoints().get(endpoint, {}).get("shadows")
        if shadows is None:
            raise NotFoundError(f"no endpoint {endpoint!r}")
        if backend not in shadows:
            raise NotFoundError(f"endpoint {endpoint!r} has no shadow to {backend!r}")
        self.client.shadow_traffic(endpoint, backend, 0)
        self._overview = None
        return {"endpoint": endpoint, "backend": backend}

    def pause_rollout(self, body: object) -> dict[str, Any]:
        """``{"endpoint": name}``: ``get_rollout(name).pause()``; answers its info."""
        return self._rollout(body, "pause")

    def resume_rollout(self, body: object) -> dict[str, Any]:
        """``{"endpoint": name}``: ``get_rollout(name).resume()``."""
        return self._rollout(body, "resume")

    def abort_rollout(self, body: object) -> dict[str, Any]:
        """``{"endpoint": name}``: ``get_rollout(name).abort()``."""
        return self._rollout(body, "abort")

    def _rollout(self, body: object, action: str) -> dict[str, Any]:
        endpoint = _field(body, "endpoint", str, "an endpoint's name")
        rollout = self.client.get_rollout(endpoint)
        getattr(rollout, action)()
        self._overview = None
        return rollout.info()
