"""The controller's core: admin operations on desired state.

Plain class, no gRPC: the servicer translates requests into these calls and
``turnout.errors`` exceptions into status codes. Every change is validated
first and applied only if valid, so a refused call changes nothing. Changes
that affect routing return only after the proxy applied them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from turnout._internal import autoscaling, backend_fields, validation, web_apps
from turnout._internal.cors import CorsPolicy
from turnout._internal.errors import (
    AlreadyExistsError,
    CapacityError,
    InUseError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    TurnoutError,
)
from turnout.v1 import controller_pb2 as pb

from . import adoption, log_tail
from .launchers.base import Launcher
from .log_tail import LogChunk
from .replica_set import ReplicaSet, ReplicaStartError
from .resources import ResourcePool
from .routing import RoutePublisher
from .store import REPLICA, BackendRecord, EndpointRecord, Store

logger = logging.getLogger(__name__)


class ControlPlane:
    def __init__(
        self,
        store: Store,
        launcher: Launcher,
        publisher: RoutePublisher,
        resources: ResourcePool | None = None,
        *,
        max_replicas: int = 16,
        allow_pickled_code: bool = True,
    ) -> None:
        self._store = store
        self.allow_pickled_code = allow_pickled_code
        self.max_replicas = max_replicas
        self._launcher = launcher
        self._publisher = publisher
        self._resources = resources or ResourcePool()
        self._sets: dict[str, ReplicaSet] = {}
        # Admin changes run one at a time: each sees the state the previous
        # left. Starting and stopping replicas, which may take long, happens
        # outside it, under the backend's own lock (``_backend_lock``), so a
        # big start of one backend holds up no change of another.
        self._lock = asyncio.Lock()
        # tag -> its lock and how many calls hold or wait for it (dropped at 0,
        # so that calls naming any tag leave nothing behind).
        self._backend_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        # tag -> replicas counted for it while a change of it is in flight
        # (a backend being created, or the larger of old and new count).
        self._reserved: dict[str, int] = {}
        # An autoscaled backend's status (the autoscaling loop's, once wired).
        self.autoscaling_status: Callable[[str, pb.BackendConfig], pb.AutoscalingStatus] | None = (
            None
        )

    # ---- backends -------------------------------------------------------

    @staticmethod
    def _spec(record: BackendRecord) -> bytes:
        """What the backend's replicas load: a serialized CreateBackendRequest."""
        request = pb.CreateBackendRequest(
            tag=record.tag, spec=record.spec, config=record.config, replica_options=record.options
        )
        return request.SerializeToString()

    @contextlib.asynccontextmanager
    async def _backend_lock(self, tag: str) -> AsyncIterator[None]:
        """Changes of one backend run one at a time, apart from the others'."""
        lock, users = self._backend_locks.setdefault(tag, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._backend_locks[tag]

    def _check_code(self, spec: pb.BackendSpec) -> None:
        """Refuse pickled code when the instance does not take it: the
        controller never unpickles, so refusing here means nothing ever runs."""
        if self.allow_pickled_code:
            return
        if spec.WhichOneof("source") == "command":
            # A command runs any program: no less than pickled code can do.
            raise PermissionDeniedError(
                "this instance does not accept command backends (--allow-pickled-code is off, "
                "and a command runs any program, as pickled code can); create the backend from "
                "an import path, or restart the controller with --allow-pickled-code"
            )
        if spec.WhichOneof("source") == "pickled_callable" or spec.pickled_init_args:
            raise PermissionDeniedError(
                "this instance does not accept pickled code (--allow-pickled-code is off: on "
                "by default only when the controller listens on loopback or a Unix socket); "
                "create the backend from an import path ('package.module:attribute', with "
                "init_args_json), or restart the controller with --allow-pickled-code"
            )

    async def create_backend(self, request: pb.CreateBackendRequest) -> pb.Backend:
        tag = validation.name(request.tag, "backend tag")
        spec = validation.spec(request.spec)
        self._check_code(spec)
        config = validation.full_config(request.config)
        options = validation.replica_options(request.replica_options)
        record = BackendRecord(tag=tag, spec=spec, config=config, options=options)
        async with self._backend_lock(tag):
            async with self._lock:
                existing = self._store.backends().get(tag)
                if existing is not None:
                    if existing == record:
                        # A retry of a call that succeeded: same answer, no duplicate.
                        return self._backend(tag)
                    raise AlreadyExistsError(f"backend {tag!r} already exists with other content")
                self._check_capacity(config.num_replicas)
                replicas = self._replica_set(record)
                replicas.check_fits(config.num_replicas, config.num_replicas)
                self._sets[tag] = replicas
                self._reserved[tag] = config.num_replicas
            try:
                await replicas.scale(config.num_replicas)
            except ReplicaStartError as exc:
                await self._discard(tag, replicas)
                raise start_error_to_user_error(exc, tag) from None
            except BaseException:
                await self._discard(tag, replicas)
                raise
            async with self._lock:
                self._reserved.pop(tag, None)
                if self._sets.get(tag) is not replicas:
                    raise TurnoutError(f"backend {tag!r} was not created: the instance stopped")
                try:
                    self._store.put_backend(record)
                except BaseException:
                    # Not recorded, so not acknowledged: nothing may stay running.
                    self._sets.pop(tag, None)
                    await replicas.stop()
                    raise
        return self._backend(tag)

    async def _discard(self, tag: str, replicas: ReplicaSet) -> None:
        """Undo a backend that was never recorded."""
        await replicas.stop()
        async with self._lock:
            self._reserved.pop(tag, None)
            if self._sets.get(tag) is replicas:
                del self._sets[tag]

    def _replica_set(self, record: BackendRecord) -> ReplicaSet:
        return ReplicaSet(
            record.tag,
            self._spec(record),
            self._launcher,
            self.routes_changed,
            record.config,
            record.options,
            self._resources,
            digest=replica_digest(record),
        )

    async def recover(self, adopt: bool = False) -> None:
        """Bring back the backends of a store written by an earlier controller.

        With ``adopt``, recorded replicas that still serve what their backend's
        record says are supervised again as they are; every other recorded
        replica is stopped. Missing replicas start in the background (retrying
        with backoff). Whatever an unacknowledged change had done before the
        crash ends up fully applied (its record was written) or undone (it was
        not): desired state is the store's, and this reconciles toward it.
        Publishes the first routing snapshot, with the adopted replicas in it.
        """
        async with self._lock:
            backends = self._store.backends()
            records = [r for r in self._store.children().values() if r.kind == REPLICA]
            wanted = {
                tag: adoption.Wanted(replica_digest(b), b.config.num_replicas)
                for tag, b in backends.items()
            }
            if adopt:
                adopted = await adoption.adopt_replicas(self._launcher, records, wanted)
            else:
                await adoption.stop_all_recorded(self._launcher, records)
                adopted = {}
            for record in backends.values():
                replicas = self._replica_set(record)
                self._sets[record.tag] = replicas
                kept = adopted.get(record.tag, [])
                replicas.adopt(kept)
                replicas.resume(record.config.num_replicas - len(kept))
                logger.info(
                    "recovering backend %r: %d replica(s) adopted, %d to start",
                    record.tag,
                    len(kept),
                    record.config.num_replicas - len(kept),
                )
        await self.routes_changed()

    async def update_backend(self, tag: str, spec: pb.BackendSpec) -> pb.Backend:
        """New code under the same tag, rolled out replica by replica."""
        spec = validation.spec(spec)
        self._check_code(spec)
        async with self._backend_lock(tag):
            async with self._lock:
                record = dataclasses.replace(self._backend_record(tag), spec=spec)
                replicas = self._sets[tag]
            try:
                await replicas.roll(self._spec(record), replica_digest(record))
            except ReplicaStartError as exc:
                raise start_error_to_user_error(exc, tag) from None
            async with self._lock:
                self._store.put_backend(record)
        return self._backend(tag)

    def get_backend(self, tag: str) -> pb.Backend:
        record = self._backend_record(tag)
        backend = self._backend(tag)
        backend.spec.CopyFrom(record.spec)
        return backend

    def list_backends(self) -> list[pb.Backend]:
        return [self._backend(tag) for tag in self._store.backends()]

    async def update_backend_config(self, tag: str, update: pb.BackendConfig) -> pb.Backend:
        validation.config_update(update)
        async with self._backend_lock(tag):
            async with self._lock:
                record = self._backend_record(tag)
                replicas = self._sets[tag]
                config = validation.merged_config(record.config, update)
                _check_capabilities(tag, config, replicas.capabilities)
                self._check_capacity(config.num_replicas, replacing=tag)
                self._reserved[tag] = max(config.num_replicas, record.config.num_replicas)
            try:
                await self._apply_config(record, config, replicas)
            finally:
                self._reserved.pop(tag, None)
        return self._backend(tag)

    async def _apply_config(
        self, record: BackendRecord, config: pb.BackendConfig, replicas: ReplicaSet
    ) -> None:
        """Restart, reconfigure and scale ``replicas`` to ``config``, then record it."""
        tag = record.tag
        new = dataclasses.replace(record, config=config)
        spec = self._spec(new)
        restart = backend_fields.needs_new_replicas(record.config, config)
        reconfigure = config.user_config_json != record.config.user_config_json or (
            config.HasField("user_config_json") != record.config.HasField("user_config_json")
        )
        limits = backend_fields.reconfigure_limits(record.config, config)
        user_config = config.user_config_json if reconfigure else ""
        previous_spec, previous_config = replicas.spec, replicas.config
        previous_digest = replicas.digest
        replicas.config = config
        try:
            if restart:
                await replicas.roll(spec, replica_digest(new))
            else:
                # Replicas started from now on read the new values; the
                # running ones take them in place.
                replicas.spec = spec
                if user_config or limits:
                    await replicas.reconfigure(user_config, **limits)
                replicas.set_digest(replica_digest(new))
            await replicas.scale(config.num_replicas)
        except (ReplicaStartError, InvalidArgumentError) as exc:
            replicas.spec, replicas.config = previous_spec, previous_config
            replicas.digest = previous_digest
            if isinstance(exc, ReplicaStartError):
                raise start_error_to_user_error(exc, tag) from None
            raise
        async with self._lock:
            self._store.put_backend(new)
        await self.routes_changed()

    async def delete_backend(self, tag: str) -> None:
        async with self._backend_lock(tag):
            async with self._lock:
                self._backend_record(tag)
                users = sorted(
                    e.name for e in self._store.endpoints().values() if tag in e.backends()
                )
                if users:
                    raise InUseError(
                        f"backend {tag!r} is used by endpoint(s) {', '.join(users)}; "
                        "change their traffic or delete them first"
                    )
                self._store.delete_backend(tag)
                replicas = self._sets.pop(tag)
            # Outside the admin lock: stopping waits for graceful shutdowns.
            await replicas.stop()
            await self.routes_changed()

    # ---- autoscaling (turnout.controller.autoscale_loop) ----------------

    def autoscaled(self) -> dict[str, pb.BackendConfig]:
        """The config of every backend that autoscales, by tag."""
        return {
            tag: record.config
            for tag, record in self._store.backends().items()
            if record.config.HasField("autoscaling") and tag in self._sets
        }

    def room_for(self, tag: str) -> int:
        """The most replicas ``tag`` may run, given the other backends'."""
        counted = {tag: b.config.num_replicas for tag, b in self._store.backends().items()}
        counted.update(self._reserved)
        counted.pop(tag, None)
        return max(0, self.max_replicas - sum(counted.values()))

    async def autoscale(self, tag: str, count: int) -> bool:
        """Scale an autoscaled backend to ``count`` replicas, as an admin
        scale would (new ones serve before this returns; removed ones leave
        the routes, then drain). False, nothing changed, when the backend is
        gone, no longer autoscales, or ``count`` no longer fits."""
        async with self._backend_lock(tag):
            async with self._lock:
                record = self._store.backends().get(tag)
                replicas = self._sets.get(tag)
                if record is None or replicas is None:
                    return False
                if not record.config.HasField("autoscaling"):
                    return False
                # Bounds changed since the decision are the ones that hold.
                count = autoscaling.policy(record.config.autoscaling).clamp(count)
                if count > record.config.num_replicas and count > self.room_for(tag):
                    return False
                config = pb.BackendConfig()
                config.CopyFrom(record.config)
                config.num_replicas = count
                new = dataclasses.replace(record, config=config)
                self._reserved[tag] = max(count, record.config.num_replicas)
            try:
                replicas.config = config
                await replicas.scale(count)
            except TurnoutError as exc:
                replicas.config = record.config
                logger.warning("backend %r: autoscaling to %d failed: %s", tag, count, exc)
                # Whatever did start keeps serving; the next decision starts from here.
                await replicas.scale(record.config.num_replicas)
                return False
            finally:
                self._reserved.pop(tag, None)
            async with self._lock:
                if self._sets.get(tag) is replicas:
                    self._store.put_backend(new)
            await self.routes_changed()
        return True

    # ---- endpoints ------------------------------------------------------

    async def create_endpoint(self, request: pb.CreateEndpointRequest) -> pb.Endpoint:
        name = validation.name(request.name, "endpoint name")
        route = validation.route(request.route)
        methods = validation.methods(list(request.methods))
        timeout = validation.request_timeout(request.request_timeout)
        cors = CorsPolicy.from_proto(request.cors) if request.HasField("cors") else None
        if not request.backend:
            # As Ray Serve: an endpoint without a backend would answer nothing.
            raise InvalidArgumentError("backend must be specified when creating an endpoint")
        async with self._lock:
            self._backend_record(request.backend)
            traffic = {request.backend: 1.0}
            record = EndpointRecord(
                name=name,
                route=route,
                methods=methods,
                traffic=traffic,
                request_timeout=timeout,
                cors=cors,
            )
            existing = self._store.endpoints().get(name)
            if existing is not None:
                if existing == record:
                    return self._endpoint_out(existing)
                raise AlreadyExistsError(f"endpoint {name!r} already exists with other content")
            self._check_route_free(route)
            self._store.put_endpoint(record)
            await self.routes_changed()
        return self._endpoint_out(record)

    async def update_endpoint(self, request: pb.UpdateEndpointRequest) -> pb.Endpoint:
        if request.clear_cors and request.HasField("cors"):
            raise InvalidArgumentError("set cors or clear_cors, not both")
        new_cors = CorsPolicy.from_proto(request.cors) if request.HasField("cors") else None
        async with self._lock:
            record = self._endpoint_record(request.name)
            route = validation.route(request.route) if request.HasField("route") else record.route
            methods = validation.methods(list(request.methods)) if request.methods else None
            timeout = (
                validation.request_timeout(request.request_timeout)
                if request.HasField("request_timeout")
                else record.request_timeout
            )
            if route != record.route:
                self._check_route_free(route)
            updated = dataclasses.replace(
                record,
                route=route,
                methods=record.methods if methods is None else methods,
                request_timeout=timeout,
                cors=None if request.clear_cors else new_cors or record.cors,
            )
            if updated != record:
                self._store.put_endpoint(updated)
                await self.routes_changed()
        return self._endpoint_out(updated)

    def _check_route_free(self, route: str) -> None:
        """Raise AlreadyExistsError when an endpoint serves ``route`` ("" never clashes)."""
        if not route:
            return
        for other in self._store.endpoints().values():
            if other.route == route:
                raise AlreadyExistsError(
                    f"route {route!r} is already taken by endpoint {other.name!r}"
                )

    def get_endpoint(self, name: str) -> pb.Endpoint:
        return self._endpoint_out(self._endpoint_record(name))

    def list_endpoints(self) -> list[pb.Endpoint]:
        return [self._endpoint_out(e) for e in self._store.endpoints().values()]

    async def delete_endpoint(self, name: str) -> None:
        async with self._lock:
            self._endpoint_record(name)
            self._store.delete_endpoint(name)
            await self.routes_changed()

    async def set_traffic(self, endpoint: str, weights: list[pb.TrafficWeight]) -> pb.Endpoint:
        traffic: dict[str, float] = {}
        for item in weights:
            if item.backend in traffic:
                raise InvalidArgumentError(
                    f"backend {validation.shown(item.backend)} is listed twice"
                )
            traffic[item.backend] = item.weight
        traffic = validation.traffic(traffic)
        async with self._lock:
            record = self._endpoint_record(endpoint)
            for tag in traffic:
                self._backend_record(tag)
            # A backend given weight 0 gets no traffic, so it is left out of the
            # split: it can then be deleted, which is the last step of a rollout.
            # (Ray 0.8 kept the zero and refused the delete.)
            traffic = {tag: weight for tag, weight in traffic.items() if weight > 0}
            record = dataclasses.replace(
                record, traffic=traffic, shadows=_shadows_beside(record.shadows, traffic)
            )
            self._store.put_endpoint(record)
            await self.routes_changed()
        return self._endpoint_out(record)

    async def shadow_traffic(self, endpoint: str, backend: str, proportion: float) -> pb.Endpoint:
        proportion = validation.proportion(proportion)
        async with self._lock:
            record = self._endpoint_record(endpoint)
            self._backend_record(backend)
            shadows = dict(record.shadows)
            if proportion == 0:
                shadows.pop(backend, None)
            else:
                if record.traffic.get(backend, 0) > 0:
                    # It already gets these requests: a copy would run them twice.
                    raise InvalidArgumentError(
                        f"backend {validation.shown(backend)} serves endpoint "
                        f"{validation.shown(endpoint)} (traffic weight > 0), so it cannot "
                        "shadow it too"
                    )
                if backend not in shadows and len(shadows) >= validation.MAX_TRAFFIC_ENTRIES:
                    raise InvalidArgumentError(
                        f"at most {validation.MAX_TRAFFIC_ENTRIES} shadows per endpoint"
                    )
                shadows[backend] = proportion
            record = dataclasses.replace(record, shadows=shadows)
            self._store.put_endpoint(record)
            await self.routes_changed()
        return self._endpoint_out(record)

    # ---- replicas and routing --------------------------------------------

    def list_replicas(self, backend: str = "") -> list[pb.Replica]:
        if backend:
            self._backend_record(backend)
            return self._sets[backend].describe()
        return [r for replicas in self._sets.values() for r in replicas.describe()]

    def _endpoint_out(self, record: EndpointRecord) -> pb.Endpoint:
        """The endpoint as callers and routers see it, with whether it serves an app."""
        endpoint = _endpoint_proto(record)
        # By the backends that answer: a shadow alone does not make the route a prefix.
        endpoint.serves_app = any(self._is_app(tag) for tag in record.traffic)
        return endpoint

    def _is_app(self, tag: str) -> bool:
        """Whether a backend is a WSGI/ASGI app: as its spec says, else as its
        replicas detected (docs/apps.md)."""
        backend = self._store.backends().get(tag)
        if backend is None:
            return False
        if backend.spec.interface != pb.BACKEND_INTERFACE_UNSPECIFIED:
            return backend.spec.interface in (pb.BACKEND_INTERFACE_WSGI, pb.BACKEND_INTERFACE_ASGI)
        replicas = self._sets.get(tag)
        if replicas is None:
            return False
        # What the running replicas report: after update_backend, the new code's.
        reports = [s.child.report.capabilities for s in replicas.running() if s.child is not None]
        return any(web_apps.is_app(c.get("interface")) for c in reports or [replicas.capabilities])

    async def replica_log(self, replica_id: str, offset: int | None, max_bytes: int) -> LogChunk:
        """Part of a running replica's log, read by its launcher where it runs
        (``log_tail``: default and most bytes, what an offset past the end does)."""
        size = log_tail.checked_max_bytes(max_bytes)
        for replicas in self._sets.values():
            for slot in replicas.running():
                if slot.replica_id == replica_id and slot.child is not None:
                    return await self._launcher.read_log(slot.child, offset, size)
        raise NotFoundError(
            f"no running replica {replica_id!r} (list_replicas() gives the ids, e.g. 'model#1')"
        )

    def snapshot_parts(self) -> tuple[list[pb.Endpoint], list[pb.BackendTargets]]:
        endpoints = [self._endpoint_out(e) for e in self._store.endpoints().values()]
        backends = []
        for tag, replicas in self._sets.items():
            record = self._store.backends().get(tag)
            targets = pb.BackendTargets(
                tag=tag,
                desired_replicas=record.config.num_replicas if record is not None else 0,
                replicas=[
                    pb.ReplicaTarget(
                        replica_id=s.replica_id, address=s.child.address, node=s.child.node_id
                    )
                    for s in replicas.running()
                    if s.child is not None
                ],
            )
            backends.append(backend_fields.with_sender_limits(targets, replicas.config))
        return endpoints, backends

    async def routes_changed(self) -> None:
        """Publish a new snapshot and wait (bounded) until the proxy applied it."""
        version = await self._publisher.publish(*self.snapshot_parts())
        if not await self._publisher.wait_applied(version):
            logger.warning("routers did not apply routing version %d in time", version)

    async def stop(self) -> None:
        """Stops every replica (used at shutdown)."""
        sets = list(self._sets.values())
        self._sets.clear()
        await asyncio.gather(*(s.stop() for s in sets), return_exceptions=True)

    # ---- helpers --------------------------------------------------------

    def _check_capacity(self, count: int, replacing: str = "") -> None:
        """Raise CapacityError unless ``count`` replicas (for a new backend, or
        instead of those of ``replacing``) fit the instance's max_replicas."""
        counted = {tag: b.config.num_replicas for tag, b in self._store.backends().items()}
        # Changes in flight count what they may run (a roll runs one more).
        counted.update(self._reserved)
        counted.pop(replacing, None)
        others = sum(counted.values())
        if others + count > self.max_replicas:
            raise CapacityError(
                f"{count} replica(s) do not fit: this instance runs at most "
                f"{self.max_replicas} replicas in all (max_replicas) and other backends "
                f"have {others}"
            )

    def _backend_record(self, tag: str) -> BackendRecord:
        record = self._store.backends().get(tag)
        if record is None:
            raise NotFoundError(f"backend {validation.shown(tag)} does not exist")
        return record

    def _endpoint_record(self, name: str) -> EndpointRecord:
        record = self._store.endpoints().get(name)
        if record is None:
            raise NotFoundError(f"endpoint {validation.shown(name)} does not exist")
        return record

    def _backend(self, tag: str) -> pb.Backend:
        record = self._backend_record(tag)
        backend = pb.Backend(
            tag=tag,
            config=record.config,
            replicas=self._sets[tag].describe(),
            replica_options=record.options,
        )
        if record.config.HasField("autoscaling"):
            if self.autoscaling_status is not None:
                status = self.autoscaling_status(tag, record.config)
            else:
                status = pb.AutoscalingStatus(desired_replicas=record.config.num_replicas)
            status.running_replicas = len(self._sets[tag].running())
            backend.autoscaling_status.CopyFrom(status)
        return backend


def replica_digest(record: BackendRecord) -> str:
    """What a replica of ``record`` runs, in a few hex digits: its code, its
    replica options, and the config it reads at start or takes in place
    (limits, ``user_config``): a replica changed in place is relabelled with
    the new digest. Two replicas with the same digest are interchangeable;
    config the senders or the controller apply (num_replicas, queues, health
    checks) is left out, so changing it does not make replicas look stale.
    """
    digest = hashlib.sha256()
    digest.update(record.spec.SerializeToString(deterministic=True))
    digest.update(record.options.SerializeToString(deterministic=True))
    for name in (*backend_fields.RECONFIGURE_LIMITS, "user_config_json"):
        digest.update(f"|{name}={getattr(record.config, name)!r}".encode())
    # Only when set, so that the digests of backends without it stay as they were.
    if record.config.HasField("http_call_methods"):
        digest.update(
            f"|http_call_methods={list(record.config.http_call_methods.names)!r}".encode()
        )
    return digest.hexdigest()[:16]


def start_error_to_user_error(error: ReplicaStartError, tag: str) -> TurnoutError:
    """What the admin caller sees when a backend's replica cannot start."""
    if error.code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):
        return InvalidArgumentError(f"backend {tag!r} cannot start: {error}")
    return TurnoutError(f"backend {tag!r}: a replica failed to start: {error}")


def _check_capabilities(tag: str, config: pb.BackendConfig, capabilities: dict[str, Any]) -> None:
    """Refuse config the backend's code cannot honour (as its replica reported)."""
    if config.max_batch_size > 1 and not capabilities.get("batch_methods"):
        raise InvalidArgumentError(
            f"backend {tag!r} has no handler decorated with @turnout.accept_batch, "
            f"so max_batch_size must stay 1 (got {config.max_batch_size})"
        )
    if config.HasField("user_config_json") and not capabilities.get("reconfigure"):
        raise InvalidArgumentError(
            f"backend {tag!r} has no reconfigure() method to take a user_config"
        )


def _shadows_beside(shadows: dict[str, float], traffic: dict[str, float]) -> dict[str, float]:
    """The shadows that stay when ``traffic`` is set: a shadow given a weight
    > 0 has been promoted (the last step of a rollout), and a backend never
    gets copies of the requests it already serves."""
    return {tag: share for tag, share in shadows.items() if traffic.get(tag, 0) == 0}


def _endpoint_proto(record: EndpointRecord) -> pb.Endpoint:
    return pb.Endpoint(
        name=record.name,
        route=record.route,
        methods=record.methods,
        traffic=[pb.TrafficWeight(backend=b, weight=w) for b, w in record.traffic.items()],
        shadows=[pb.ShadowTarget(backend=b, proportion=p) for b, p in record.shadows.items()],
        request_timeout=record.request_timeout,
        cors=record.cors.to_proto() if record.cors else None,
    )
