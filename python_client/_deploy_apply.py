"""``turnout deploy`` against a live instance: read its state, apply a plan.

The plan itself is computed without processes in ``turnout.deploy``. Reading
needs what ``Client`` does not expose (each backend's import path and init
args, replica options, endpoint timeouts), so this module also calls the
controller's read RPCs directly; changes go through the public ``Client``,
except that backends are created and updated with their init args as JSON
(``init_args_json``), which the controller keeps as given, so a later deploy
can compare them with the file.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

from turnout._internal import rpc, web_apps
from turnout._internal.cors import CorsPolicy
from turnout.client import Client, call_controller
from turnout.command import Command
from turnout.config import BackendConfig
from turnout.deploy import (
    BackendChange,
    BackendEntry,
    EndpointChange,
    EndpointEntry,
    Plan,
    State,
)
from turnout.errors import TurnoutError
from turnout.rollouts import ENDED
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc

Resp = TypeVar("Resp")

_READ_TIMEOUT_S = 30.0
# Creating or rolling a backend waits for replicas to load their code.
_START_TIMEOUT_S = 600.0


class Instance:
    """A running instance as ``turnout deploy`` sees it.

    Example::

        instance = Instance(turnout.Client("127.0.0.1:50051"))
        apply(plan(wanted, instance.state()), instance, sys.stdout)
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._channel = rpc.channel(
            client.controller_address, rpc.security_for(client.controller_address)
        )
        self._stub = controller_pb2_grpc.ControllerServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(
        self, method: Callable[..., Resp], request: Any, timeout: float = _READ_TIMEOUT_S
    ) -> Resp:
        address = self.client.controller_address
        return call_controller(
            method,
            request,
            timeout,
            lambda details: f"the controller at {address} stopped answering ({details})",
        )

    # ---- reading ------------------------------------------------------------

    def state(self) -> State:
        """Every backend (with code and options) and endpoint the instance has now."""
        listed = self._call(self._stub.ListBackends, pb.ListBackendsRequest())
        backends = {}
        for item in listed.backends:
            reply = self._call(self._stub.GetBackend, pb.GetBackendRequest(tag=item.tag))
            backends[item.tag] = _backend(reply.backend)
        endpoints = self._call(self._stub.ListEndpoints, pb.ListEndpointsRequest())
        rolling = {
            name: info["to_backend"]
            for name, info in self.client.list_rollouts().items()
            if info["state"] not in ENDED
        }
        return State(
            backends=backends,
            endpoints={
                e.name: dataclasses.replace(_endpoint(e), rolling_to=rolling.get(e.name))
                for e in endpoints.endpoints
            },
        )

    # ---- changing -----------------------------------------------------------

    def create_backend(self, backend: BackendEntry) -> None:
        request = pb.CreateBackendRequest(
            tag=backend.name,
            spec=_spec(backend),
            config=BackendConfig.coerce(dict(backend.config)).to_proto(),
            replica_options=backend.replica_options,
        )
        self._call(self._stub.CreateBackend, request, timeout=_START_TIMEOUT_S)

    def update_code(self, backend: BackendEntry) -> None:
        request = pb.UpdateBackendRequest(tag=backend.name, spec=_spec(backend))
        self._call(self._stub.UpdateBackend, request, timeout=_START_TIMEOUT_S)


def _spec(backend: BackendEntry) -> pb.BackendSpec:
    if backend.command is not None:
        return pb.BackendSpec(command=backend.command.to_proto())
    spec = pb.BackendSpec(
        import_path=backend.import_path or "", interface=web_apps.to_proto(backend.interface)
    )
    if backend.init_args:
        spec.init_args_json = json.dumps(list(backend.init_args))
    return spec


def _backend(message: pb.Backend) -> BackendEntry:
    spec = message.spec
    init_args: tuple[Any, ...] | None = ()
    if spec.init_args_json:
        init_args = tuple(json.loads(spec.init_args_json))
    elif spec.pickled_init_args:
        init_args = None
    return BackendEntry(
        name=message.tag,
        import_path=spec.import_path if spec.WhichOneof("source") == "import_path" else None,
        init_args=init_args,
        command=Command.from_proto(spec.command) if spec.HasField("command") else None,
        config=BackendConfig.from_proto(message.config).to_dict(),
        replica_options=message.replica_options,
        interface=_interface(spec.interface),
    )


def _interface(value: int) -> str:
    """The interface a running backend's spec names ("auto" when it names
    none, or one this client does not know)."""
    try:
        return web_apps.from_proto(value) or "auto"
    except ValueError:
        return "auto"


def _endpoint(message: pb.Endpoint) -> EndpointEntry:
    return EndpointEntry(
        name=message.name,
        route=message.route or None,
        methods=tuple(message.methods),
        traffic={t.backend: t.weight for t in message.traffic},
        shadows={s.backend: s.proportion for s in message.shadows},
        request_timeout=message.request_timeout,
        cors=CorsPolicy.from_proto(message.cors) if message.HasField("cors") else None,
    )


# ---- applying -------------------------------------------------------------------

_PAST = {
    "create": "created",
    "update": "updated",
    "delete": "removed",
    "unchanged": "unchanged",
    "kept": "kept (not in the file; --prune removes it)",
}


def apply(plan: Plan, instance: Instance, out: TextIO, *, dry_run: bool = False) -> None:
    """Carry out ``plan``, one line per item on ``out`` as it goes.

    Order: backends are created and updated first, so endpoints can use them;
    with --prune, endpoints that leave go before any are created (a route can
    move to another name), and backends that leave go last, once nothing
    sends them traffic. The first refused call raises; what was done before
    it stays done, and re-running the deploy finishes the job.

    Example::

        apply(plan(wanted, instance.state(), prune=True), instance, sys.stdout)
    """
    for backend_change in plan.backends:
        if backend_change.action != "delete":
            _backend_step(backend_change, instance, out, dry_run)
    for endpoint_change in plan.endpoints:
        if endpoint_change.action == "delete":
            _endpoint_step(endpoint_change, instance, out, dry_run)
    for endpoint_change in plan.endpoints:
        if endpoint_change.action != "delete":
            _endpoint_step(endpoint_change, instance, out, dry_run)
    for backend_change in plan.backends:
        if backend_change.action == "delete":
            _backend_step(backend_change, instance, out, dry_run)


def _step(
    out: TextIO,
    label: str,
    doing: str,
    work: Callable[[], object],
    done: str,
    progress: Callable[[], str | None] | None = None,
) -> None:
    """One line of progress: "backend x: creating (2 replicas)... ready".

    While ``work`` runs, ``progress`` is asked every PROGRESS_INTERVAL_S what
    to add to the line ("0/2 running..."), so a slow start shows what it
    waits for; each new answer is written once.
    """
    out.write(f"{label}: {doing}... ")
    out.flush()
    stop = threading.Event()
    watcher = None
    if progress is not None:
        watcher = threading.Thread(
            target=_watch, args=(out, progress, stop), name="deploy-progress", daemon=True
        )
        watcher.start()
    try:
        work()
    except BaseException:
        _stop_watching(stop, watcher)
        _line(out, "failed")
        raise
    _stop_watching(stop, watcher)
    _line(out, done)


PROGRESS_INTERVAL_S = 0.5


def _watch(out: TextIO, progress: Callable[[], str | None], stop: threading.Event) -> None:
    last = None
    while not stop.wait(PROGRESS_INTERVAL_S):
        text = progress()
        if text and text != last:
            out.write(f"{text}... ")
            out.flush()
            last = text


def _stop_watching(stop: threading.Event, watcher: threading.Thread | None) -> None:
    stop.set()
    if watcher is not None:
        watcher.join()


def _replicas_running(client: Client, tag: str, wanted: int) -> Callable[[], str | None]:
    """Progress of a backend's replicas: "1/2 running"."""

    def progress() -> str | None:
        try:
            replicas = client.list_replicas()
        except TurnoutError:
            return None  # a progress line is not worth failing the deploy
        running = sum(1 for r in replicas if r.backend == tag and r.state == "RUNNING")
        return f"{min(running, wanted)}/{wanted} running"

    return progress


def _line(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def _describe(change: BackendChange | EndpointChange) -> str:
    return f" ({'; '.join(change.details)})" if change.details else ""


def _done_early(
    change: BackendChange | EndpointChange,
    label: str,
    out: TextIO,
    dry_run: bool,
    delete: Callable[[str], object],
) -> bool:
    """Report what needs no call, run a removal; True when that was all."""
    if change.action in ("unchanged", "kept"):
        _line(out, f"{label}: {_PAST[change.action]}")
    elif dry_run:
        _line(out, f"{label}: would be {_PAST[change.action]}{_describe(change)}")
    elif change.action == "delete":
        _step(out, label, "removing", lambda: delete(change.name), "removed")
    else:
        return False
    return True


def _backend_step(change: BackendChange, instance: Instance, out: TextIO, dry_run: bool) -> None:
    label = f"backend {change.name}"
    client, desired = instance.client, change.desired
    if _done_early(change, label, out, dry_run, client.delete_backend):
        return
    assert desired is not None
    if change.action == "create":
        replicas = desired.config.get("num_replicas", 1)
        doing = f"creating ({replicas} {'replica' if replicas == 1 else 'replicas'})"
        progress = _replicas_running(client, change.name, int(replicas))
        _step(out, label, doing, lambda: instance.create_backend(desired), "ready", progress)
        return

    def update() -> None:
        if change.new_code:
            instance.update_code(desired)
        if change.config_update:
            client.update_backend_config(change.name, dict(change.config_update))

    _step(out, label, f"updating{_describe(change)}", update, "updated")


def _endpoint_step(change: EndpointChange, instance: Instance, out: TextIO, dry_run: bool) -> None:
    label = f"endpoint {change.name}"
    client, desired = instance.client, change.desired
    if _done_early(change, label, out, dry_run, client.delete_endpoint):
        return
    assert desired is not None
    if change.action == "create":
        _step(out, label, "creating", lambda: _create_endpoint(client, desired), "created")
        return

    def update() -> None:
        if change.new_shape:
            client.update_endpoint(
                change.name,
                route=desired.route,
                methods=list(desired.methods),
                request_timeout=desired.request_timeout,
                cors=desired.cors.to_dict() if desired.cors else False,
            )
        if change.rollout:
            (backend,) = desired.traffic
            client.rollout(change.name, backend, **dict(desired.rollout or {}))
        elif change.new_traffic:
            client.set_traffic(change.name, dict(desired.traffic))
        for backend, proportion in change.shadow_updates.items():
            client.shadow_traffic(change.name, backend, proportion)

    done = "updated"
    if change.rollout:
        done += f"; rollout started (`turnout rollout status {change.name}` follows it)"
    _step(out, label, f"updating{_describe(change)}", update, done)


def _create_endpoint(client: Client, endpoint: EndpointEntry) -> None:
    # Created on its heaviest backend, so the route never answers without one;
    # a split is set right after.
    first = max(endpoint.traffic, key=lambda b: endpoint.traffic[b]) if endpoint.traffic else None
    client.create_endpoint(
        endpoint.name,
        first,
        route=endpoint.route,
        methods=list(endpoint.methods),
        request_timeout=endpoint.request_timeout or None,
        cors=endpoint.cors.to_dict() if endpoint.cors else None,
    )
    if len(endpoint.traffic) > 1:
        client.set_traffic(endpoint.name, dict(endpoint.traffic))
    for backend, proportion in endpoint.shadows.items():
        client.shadow_traffic(endpoint.name, backend, proportion)
