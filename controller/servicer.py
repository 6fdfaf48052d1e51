"""gRPC transport of the controller: protobuf in, ControlPlane call, protobuf out.

No logic lives here. ``turnout.errors`` raised by the core become status codes
in one place (``_translate_errors``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from turnout._internal import auth, validation
from turnout._internal.errors import TurnoutError, status_for
from turnout._internal.latency import WINDOW_S
from turnout.v1 import controller_pb2 as pb
from turnout.v1 import controller_pb2_grpc
from turnout.v1 import rollout_pb2 as rpb

from .control_plane import ControlPlane
from .load_book import LoadBook
from .rollouts import PlaneHost, Rollouts
from .routing import RoutePublisher
from .stats_book import StatsBook, WindowStats
from .store import MemoryStore

logger = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


def _translate_errors(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await method(self, request, context)
        except TurnoutError as exc:
            await context.abort(status_for(exc), validation.truncated(str(exc), MAX_ERROR_CHARS))
            raise  # abort raises; this line only satisfies the type checker

    return wrapper


# An error message is at most this long (a replica's reason may quote its
# traceback); the rest is in the controller's and the replica's logs.
MAX_ERROR_CHARS = 4096


# Principals whose routing stream and acknowledgements admin calls trust.
ROUTER_PRINCIPALS = frozenset({auth.ADMIN, "proxy"})
# Reporter ids of other principals' ReportStats are namespaced under this.
HANDLE_REPORTS = "handle:"

SERVICE = pb.DESCRIPTOR.services_by_name["ControllerService"]
ROUTER_SERVICE = pb.DESCRIPTOR.services_by_name["RouterService"]


def add_to_server(servicer: ControllerServicer, server: grpc.aio.Server) -> None:
    """Serve ``servicer`` as turnout.v1.ControllerService and
    turnout.v1.RouterService on ``server``.

    As the generated ``add_ControllerServiceServicer_to_server`` does, except
    that requests are parsed here: bytes that are no valid request get
    INVALID_ARGUMENT, where gRPC's own deserializer failure would answer UNKNOWN.
    """
    for service in (SERVICE, ROUTER_SERVICE):
        _add_service(servicer, server, service)


def _add_service(servicer: ControllerServicer, server: grpc.aio.Server, service: Any) -> None:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        # Messages may come from any file of turnout.v1 (rollout.proto's too).
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        implementation = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _parsing_stream(implementation, request_type),
                response_serializer=response_type.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _parsing(implementation, request_type),
                response_serializer=response_type.SerializeToString,
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


async def _parse(request_type: Any, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    try:
        return request_type.FromString(raw)
    except DecodeError:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {request_type.DESCRIPTOR.full_name}",
        )


def _parsing(method: Callable[..., Awaitable[Any]], request_type: Any) -> Any:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await method(await _parse(request_type, raw, context), context)

    return handle


def _parsing_stream(method: Callable[..., AsyncIterator[Any]], request_type: Any) -> Any:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async for item in method(await _parse(request_type, raw, context), context):
            yield item

    return handle


class ControllerServicer(
    controller_pb2_grpc.ControllerServiceServicer, controller_pb2_grpc.RouterServiceServicer
):
    """Both services of the controller; they share the stats book."""

    def __init__(
        self,
        plane: ControlPlane,
        publisher: RoutePublisher,
        instance: pb.GetInstanceResponse,
        shutdown: Callable[[], Awaitable[None]],
        data_token: Callable[[str | None], str] = lambda presented: presented or "",
        principal: Callable[[str | None], str | None] = lambda presented: auth.ADMIN,
        stats: StatsBook | None = None,
        loads: LoadBook | None = None,
        rollouts: Rollouts | None = None,
    ) -> None:
        self._loads = LoadBook() if loads is None else loads
        self._data_token = data_token
        self._principal = principal
        self._stats = StatsBook() if stats is None else stats
        self._rollouts = (
            Rollouts(MemoryStore(), PlaneHost(plane, self._stats)) if rollouts is None else rollouts
        )
        self._plane = plane
        self._publisher = publisher
        self._instance = instance
        self._shutdown = shutdown

    @_translate_errors
    async def CreateBackend(
        self, request: pb.CreateBackendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateBackendResponse:
        return pb.CreateBackendResponse(backend=await self._plane.create_backend(request))

    @_translate_errors
    async def GetBackend(
        self, request: pb.GetBackendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetBackendResponse:
        return pb.GetBackendResponse(backend=self._plane.get_backend(request.tag))

    @_translate_errors
    async def ListBackends(
        self, request: pb.ListBackendsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListBackendsResponse:
        return pb.ListBackendsResponse(backends=self._plane.list_backends())

    @_translate_errors
    async def UpdateBackend(
        self, request: pb.UpdateBackendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UpdateBackendResponse:
        backend = await self._plane.update_backend(request.tag, request.spec)
        return pb.UpdateBackendResponse(backend=backend)

    @_translate_errors
    async def UpdateBackendConfig(
        self, request: pb.UpdateBackendConfigRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UpdateBackendConfigResponse:
        backend = await self._plane.update_backend_config(request.tag, request.config)
        return pb.UpdateBackendConfigResponse(backend=backend)

    @_translate_errors
    async def DeleteBackend(
        self, request: pb.DeleteBackendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteBackendResponse:
        await self._plane.delete_backend(request.tag)
        return pb.DeleteBackendResponse()

    @_translate_errors
    async def CreateEndpoint(
        self, request: pb.CreateEndpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateEndpointResponse:
        return pb.CreateEndpointResponse(endpoint=await self._plane.create_endpoint(request))

    @_translate_errors
    async def UpdateEndpoint(
        self, request: pb.UpdateEndpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UpdateEndpointResponse:
        return pb.UpdateEndpointResponse(endpoint=await self._plane.update_endpoint(request))

    @_translate_errors
    async def GetEndpoint(
        self, request: pb.GetEndpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetEndpointResponse:
        return pb.GetEndpointResponse(endpoint=self._plane.get_endpoint(request.name))

    @_translate_errors
    async def ListEndpoints(
        self, request: pb.ListEndpointsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListEndpointsResponse:
        return pb.ListEndpointsResponse(endpoints=self._plane.list_endpoints())

    @_translate_errors
    async def DeleteEndpoint(
        self, request: pb.DeleteEndpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteEndpointResponse:
        await self._plane.delete_endpoint(request.name)
        return pb.DeleteEndpointResponse()

    @_translate_errors
    async def SetTraffic(
        self, request: pb.SetTrafficRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SetTrafficResponse:
        endpoint = await self._plane.set_traffic(request.endpoint, list(request.traffic))
        return pb.SetTrafficResponse(endpoint=endpoint)

    @_translate_errors
    async def ShadowTraffic(
        self, request: pb.ShadowTrafficRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ShadowTrafficResponse:
        endpoint = await self._plane.shadow_traffic(
            request.endpoint, request.backend, request.proportion
        )
        return pb.ShadowTrafficResponse(endpoint=endpoint)

    @_translate_errors
    async def ListReplicas(
        self, request: pb.ListReplicasRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListReplicasResponse:
        return pb.ListReplicasResponse(replicas=self._plane.list_replicas(request.backend))

    @_translate_errors
    async def GetReplicaLog(
        self, request: pb.GetReplicaLogRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetReplicaLogResponse:
        offset = request.offset if request.HasField("offset") else None
        chunk = await self._plane.replica_log(request.replica_id, offset, request.max_bytes)
        return pb.GetReplicaLogResponse(
            data=chunk.data, next_offset=chunk.next_offset, size=chunk.size
        )

    async def WatchRoutes(
        self, request: pb.WatchRoutesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchRoutesResponse]:
        # Anyone else's stream is anonymous: admin calls never wait for it.
        subscriber = request.subscriber_id if self._names_routers(context) else ""
        async for snapshot in self._publisher.watch(subscriber):
            yield pb.WatchRoutesResponse(snapshot=snapshot)

    async def AckRoutes(
        self, request: pb.AckRoutesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AckRoutesResponse:
        if request.subscriber_id and not self._names_routers(context):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "only the proxy acknowledges routes: admin calls wait for it, so no "
                "other token may acknowledge in its name",
            )
        await self._publisher.ack(request.subscriber_id, request.version)
        return pb.AckRoutesResponse()

    async def ReportStats(
        self, request: pb.ReportStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReportStatsResponse:
        reporter = request.reporter_id
        if not self._names_routers(context):
            # Handles' counters live beside the proxy's, never in place of them.
            reporter = f"{HANDLE_REPORTS}{reporter}"
        self._stats.record(reporter, list(request.endpoints), request.counting_seconds)
        self._loads.report(reporter, request.loads)
        return pb.ReportStatsResponse()

    def _names_routers(self, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        """Whether the caller may watch, acknowledge and report under the ids
        of the routers admin calls wait for: the proxy (and operators) only.
        User code holds a handle's token, which has the router role too."""
        presented = auth.bearer(context.invocation_metadata())
        return self._principal(presented) in ROUTER_PRINCIPALS

    async def GetDataToken(
        self, request: pb.GetDataTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetDataTokenResponse:
        presented = auth.bearer(context.invocation_metadata())
        return pb.GetDataTokenResponse(token=self._data_token(presented))

    @_translate_errors
    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetStatsResponse:
        recent = self._stats.windows(request.window_seconds or WINDOW_S)
        return pb.GetStatsResponse(
            endpoints=self._stats.totals(),
            recent=[_window_proto(endpoint, backend, w) for endpoint, backend, w in recent],
        )

    @_translate_errors
    async def StartRollout(
        self, request: rpb.StartRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rpb.StartRolloutResponse:
        return rpb.StartRolloutResponse(rollout=await self._rollouts.start(request.rollout))

    @_translate_errors
    async def GetRollout(
        self, request: rpb.GetRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rpb.GetRolloutResponse:
        return rpb.GetRolloutResponse(rollout=self._rollouts.get(request.endpoint))

    @_translate_errors
    async def ListRollouts(
        self, request: rpb.ListRolloutsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rpb.ListRolloutsResponse:
        return rpb.ListRolloutsResponse(rollouts=self._rollouts.list())

    @_translate_errors
    async def PauseRollout(
        self, request: rpb.PauseRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rpb.PauseRolloutResponse:
        return rpb.PauseRolloutResponse(rollout=await self._rollouts.pause(request.endpoint))

    @_translate_errors
    async def ResumeRollout(
        self, request: rpb.ResumeRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rpb.ResumeRolloutResponse:
        return rpb.ResumeRolloutResponse(rollout=await self._rollouts.resume(request.endpoint))

    @_translate_errors
    async def AbortRollout(
        self, request: rpb.AbortRolloutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> rpb.AbortRolloutResponse:
        return rpb.AbortRolloutResponse(rollout=await self._rollouts.abort(request.endpoint))

    async def GetInstance(
        self, request: pb.GetInstanceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetInstanceResponse:
        return self._instance

    async def Shutdown(
        self, request: pb.ShutdownRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ShutdownResponse:
        logger.info("shutdown requested over gRPC")
        # Answer only once every child process is gone, so the caller can rely on it.
        await self._shutdown()
        return pb.ShutdownResponse()


def _window_proto(endpoint: str, backend: str, window: WindowStats) -> pb.WindowStats:
    quantiles = {
        f"{name}_seconds": value
        for name in ("p50", "p95", "p99", "handler_p50", "handler_p95", "handler_p99")
        if (value := getattr(window, name)) is not None
    }
    return pb.WindowStats(
        endpoint=endpoint,
        backend=backend,
        window_seconds=window.seconds,
        requests=window.requests,
        errors=window.errors,
        **quantiles,
    )
