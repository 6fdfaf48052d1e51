"""``turnout replica-check ADDRESS``: drives a running replica, in any
language, through the replica contract (docs/replica-protocol.md) and says,
rule by rule, whether it keeps it.

The replica must serve the conformance handler (the same document says what
it answers; ``turnout._conformance.echo`` is the Python one), so that every
answer is known in advance. Rules that need something the caller did not give
(a token, the replica's pid) are skipped, and say what would run them.

Example::

    results = run(Target("127.0.0.1:50300", token="data-token"))
    print(render(results))
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from turnout._internal import auth, rpc
from turnout._internal.rpc import Security, TLSConfig
from turnout.v1 import http_pb2, replica_pb2, replica_pb2_grpc

REPLICA_SERVICE = "turnout.v1.ReplicaService"
# Seconds one call of the kit may take (the large bodies included).
CALL_TIMEOUT_S = 30.0
# Seconds a handler may take to notice its call was cancelled.
CANCEL_NOTICE_S = 10.0
# Seconds a stopping replica may take to finish a drain and close its port.
STOP_TIMEOUT_S = 60.0
LARGE_BODY_BYTES = 8 * 2**20
# Calls sent at once on one stream, each sleeping a different time.
MULTIPLEXED_CALLS = 20
# A StreamCall id beyond 2**53: a replica that reads ids as doubles loses it.
BIG_ID = 2**63 + 12345
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class Target:
    """The replica to check and what the caller knows of it."""

    address: str
    # Presented on ReplicaService calls (a data-role token); None = none.
    token: str | None = None
    # Presented on Reconfigure (the controller's control-role token).
    control_token: str | None = None
    # The replica's pid: the graceful-stop rules send it SIGTERM.
    stop_pid: int | None = None
    tls: TLSConfig | None = None


@dataclass(frozen=True)
class Outcome:
    rule: str
    # "pass", "fail" or "skip"
    verdict: str
    detail: str = ""


class RuleFailed(Exception):
    """A rule does not hold; the message says what was seen."""


class Skipped(Exception):
    """A rule cannot run with what was given; the message says what would run it."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise RuleFailed(message)


@dataclass
class _Kit:
    target: Target
    channel: grpc.Channel
    stub: replica_pb2_grpc.ReplicaServiceStub = field(init=False)
    health: health_pb2_grpc.HealthStub = field(init=False)

    def __post_init__(self) -> None:
        self.stub = replica_pb2_grpc.ReplicaServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return _bearer(self.target.token)

    def handle(
        self, request: replica_pb2.HandleRequest, timeout: float = CALL_TIMEOUT_S
    ) -> replica_pb2.HandleResponse:
        answer: replica_pb2.HandleResponse = self.stub.Handle(
            request, timeout=timeout, metadata=self.metadata
        )
        return answer

    def http(
        self,
        path: str,
        *,
        method: str = "GET",
        query: str = "",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        request_id: str = "",
        method_name: str = "",
    ) -> http_pb2.HttpResponse:
        answer = self.handle(
            http_call(
                path,
                method=method,
                query=query,
                headers=headers,
                body=body,
                request_id=request_id,
                method_name=method_name,
            )
        )
        expect(answer.HasField("http"), f"the answer to an HTTP request has no http: {answer}")
        return answer.http

    def probe(self, key: str) -> str:
        answer = self.http("/probe", query=f"key={key}")
        try:
            return str(json.loads(answer.body)["state"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RuleFailed(f"/probe answered {answer.body[:200]!r}: {exc}") from None

    def wait_for_state(self, key: str, wanted: str, timeout: float = CANCEL_NOTICE_S) -> None:
        deadline = time.monotonic() + timeout
        state = self.probe(key)
        while state != wanted:
            if time.monotonic() > deadline:
                raise RuleFailed(f"the /sleep call {key} is {state!r}, not {wanted!r}")
            time.sleep(0.02)
            state = self.probe(key)

    def stream(self) -> Stream:
        return Stream(self.stub, self.metadata)


def tokens_from(
    token_file: Path | None = None,
    control_token_file: Path | None = None,
    credentials_file: Path | None = None,
) -> tuple[str | None, str | None]:
    """The data and control tokens to present: from their files, else those a
    replica's credentials file accepts with the data and the control role."""
    token = auth.read_private(token_file) if token_file else None
    control = auth.read_private(control_token_file) if control_token_file else None
    if credentials_file is not None:
        accepted = auth.ChildCredentials.read(credentials_file).accept
        for presented, roles in sorted(accepted.items()):
            if token is None and auth.DATA in roles:
                token = presented
            if control is None and auth.CONTROL in roles:
                control = presented
    return token, control


def _bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def http_call(
    path: str,
    *,
    method: str = "GET",
    query: str = "",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    request_id: str = "",
    method_name: str = "",
) -> replica_pb2.HandleRequest:
    return replica_pb2.HandleRequest(
        request_id=request_id or f"check-{uuid.uuid4().hex[:12]}",
        method_name=method_name,
        http=http_pb2.HttpRequest(
            method=method,
            scheme="http",
            host="replica-check.invalid:8000",
            path=path,
            query_string=query,
            headers=[http_pb2.Header(name=k, value=v) for k, v in headers or ()],
            body=body,
            remote_addr="127.0.0.1:40000",
        ),
    )


class Stream:
    """One HandleStream: messages written when asked, answers gathered by id."""

    def __init__(
        self, stub: replica_pb2_grpc.ReplicaServiceStub, metadata: tuple[tuple[str, str], ...]
    ) -> None:
        self._outbox: queue.Queue[replica_pb2.HandleStreamRequest | None] = queue.Queue()
        self._call = stub.HandleStream(
            self._messages(), timeout=CALL_TIMEOUT_S * 2, metadata=metadata
        )
        self.answers: queue.Queue[replica_pb2.StreamAnswer | BaseException | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _messages(self) -> Iterator[replica_pb2.HandleStreamRequest]:
        while (message := self._outbox.get()) is not None:
            yield message

    def _read(self) -> None:
        try:
            for message in self._call:
                for answer in message.answers:
                    self.answers.put(answer)
            self.answers.put(None)
        except BaseException as exc:  # handed to the reading rule
            self.answers.put(exc)

    def send(
        self,
        calls: Sequence[replica_pb2.StreamCall] = (),
        cancelled: Sequence[int] = (),
    ) -> None:
        self._outbox.put(replica_pb2.HandleStreamRequest(calls=calls, cancelled_ids=cancelled))

    def close(self) -> None:
        """Half-close: the sender sends no more."""
        self._outbox.put(None)

    def next(self, timeout: float = CALL_TIMEOUT_S) -> replica_pb2.StreamAnswer:
        try:
            item = self.answers.get(timeout=timeout)
        except queue.Empty:
            raise RuleFailed(f"no answer on the stream within {timeout:g} s") from None
        if item is None:
            raise RuleFailed("the replica ended the stream before answering every call")
        if isinstance(item, grpc.RpcError):
            raise RuleFailed(f"the stream failed: {_code(item).name}: {_details(item)}")
        if isinstance(item, BaseException):
            raise RuleFailed(f"the stream failed: {item!r}")
        return item

    def rest(self, timeout: float = CALL_TIMEOUT_S) -> list[replica_pb2.StreamAnswer]:
        """Every answer until the replica ends the stream (after ``close``)."""
        deadline = time.monotonic() + timeout
        found: list[replica_pb2.StreamAnswer] = []
        while True:
            try:
                item = self.answers.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuleFailed(
                    f"the replica did not end the stream within {timeout:g} s of the "
                    "sender's half-close with every call answered"
                ) from None
            if item is None:
                return found
            if isinstance(item, grpc.RpcError):
                raise RuleFailed(f"the stream failed: {_code(item).name}: {_details(item)}")
            if isinstance(item, BaseException):
                raise RuleFailed(f"the stream failed: {item!r}")
            found.append(item)

    def cancel(self) -> None:
        self._call.cancel()


def _header(response: http_pb2.HttpResponse, name: str) -> list[str]:
    return [h.value for h in response.headers if h.name.lower() == name.lower()]


def _one_header(response: http_pb2.HttpResponse, name: str) -> str:
    values = _header(response, name)
    expect(len(values) == 1, f"expected one {name} header, got {values!r}")
    return values[0]


def _code(exc: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = exc.code()
    return code


def _details(exc: grpc.RpcError) -> str:
    return str(exc.details())


def _expect_status(call: Callable[[], object], wanted: grpc.StatusCode, what: str) -> None:
    try:
        call()
    except grpc.RpcError as exc:
        expect(
            _code(exc) == wanted,
            f"{what}: expected {wanted.name}, got {_code(exc).name}: {_details(exc)}",
        )
        return
    raise RuleFailed(f"{what}: expected {wanted.name}, but the call succeeded")


# ---- the rules ------------------------------------------------------------------


def health_serving(kit: _Kit) -> None:
    """grpc.health.v1.Health says SERVING for "" and for turnout.v1.ReplicaService,
    without a token."""
    for service in ("", REPLICA_SERVICE):
        reply = kit.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        expect(reply.status == SERVING, f"Check({service!r}) said {reply.status}, not SERVING")


def health_unknown_service(kit: _Kit) -> None:
    """Health.Check of a service the replica does not serve fails NOT_FOUND."""
    _expect_status(
        lambda: kit.health.Check(
            health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10
        ),
        grpc.StatusCode.NOT_FOUND,
        "Check('no.such.Service')",
    )


def plain_request(kit: _Kit) -> None:
    """A plain GET through Handle is answered 200 with an empty body, and the
    handler saw its method and path."""
    answer = kit.http("/echo")
    expect(answer.status == 200, f"status {answer.status}, not 200")
    expect(answer.body == b"", f"body {answer.body[:100]!r}, not empty")
    expect(_one_header(answer, "X-Seen-Method") == "GET", "the handler did not see GET")
    expect(_one_header(answer, "X-Seen-Path") == "/echo", "the handler did not see /echo")


def request_fields(kit: _Kit) -> None:
    """The method, the percent-decoded path and the raw query string reach the handler."""
    answer = kit.http(
        "/echo/a%20b",
        method="POST",
        query="x=1&y=%C3%A9",
        body=b"hi",
        headers=[("Content-Type", "text/plain")],
    )
    expect(answer.status == 200, f"status {answer.status}, not 200")
    seen = {name: _one_header(answer, f"X-Seen-{name}") for name in ("Method", "Path", "Query")}
    wanted = {"Method": "POST", "Path": "/echo/a b", "Query": "x=1&y=%C3%A9"}
    expect(seen == wanted, f"the handler saw {seen}, not {wanted}")
    expect(_one_header(answer, "Content-Type") == "text/plain", "Content-Type not echoed")


def header_round_trip(kit: _Kit) -> None:
    """Request headers reach the handler (names in any case, values as sent:
    empty and latin-1 ones too) and its response headers come back."""
    sent = [("X-Echo-One", "1"), ("x-echo-empty", ""), ("X-Echo-Latin", "café ü")]
    answer = kit.http("/echo", headers=sent)
    for name, value in sent:
        got = _header(answer, name)
        expect(got == [value], f"header {name}: sent {value!r}, got back {got!r}")


def repeated_response_headers(kit: _Kit) -> None:
    """Repeated response headers (three Set-Cookie) come back apart and in order."""
    answer = kit.http("/cookies", query="n=3")
    got = _header(answer, "Set-Cookie")
    expect(got == ["c1=1", "c2=2", "c3=3"], f"Set-Cookie headers {got!r}")


def binary_body(kit: _Kit) -> None:
    """A body holding every byte value comes back unchanged."""
    body = bytes(range(256)) * 64
    answer = kit.http("/echo", method="POST", body=body)
    expect(answer.body == body, f"{len(body)} bytes sent, {len(answer.body)} different back")


def empty_body(kit: _Kit) -> None:
    """A POST without a body is echoed with an empty body."""
    answer = kit.http("/echo", method="POST")
    expect(answer.status == 200 and answer.body == b"", f"{answer.status} {answer.body[:50]!r}")


def large_body(kit: _Kit) -> None:
    """An 8 MiB body comes back unchanged through Handle and through HandleStream
    (no 4 MiB message limit on either side)."""
    body = os.urandom(LARGE_BODY_BYTES)
    answer = kit.http("/echo", method="POST", body=body)
    expect(answer.body == body, f"Handle: {len(answer.body)} bytes back, not the {len(body)} sent")
    stream = kit.stream()
    try:
        stream.send(
            [replica_pb2.StreamCall(id=1, request=http_call("/echo", method="POST", body=body))]
        )
        reply = stream.next()
        expect(reply.id == 1 and reply.HasField("response"), f"stream answer {reply.id}")
        back = reply.response.http.body
        expect(back == body, f"HandleStream: {len(back)} bytes back, not the {len(body)} sent")
        stream.close()
        stream.rest()
    finally:
        stream.cancel()


def status_codes(kit: _Kit) -> None:
    """The handler's status is the answer's status."""
    for code in (201, 204, 404, 503):
        answer = kit.http(f"/status/{code}")
        expect(answer.status == code, f"/status/{code} answered {answer.status}")


def handler_error(kit: _Kit) -> None:
    """A handler that raises gets a 500 answer with a JSON body naming the error and
    the request id, never a gRPC error."""
    answer = kit.http("/fail", request_id="check-fail-1")
    expect(answer.status == 500, f"status {answer.status}, not 500")
    expect(
        _one_header(answer, "Content-Type").startswith("application/json"),
        "the error body is not application/json",
    )
    try:
        body = json.loads(answer.body)
    except ValueError:
        raise RuleFailed(f"the error body is not JSON: {answer.body[:200]!r}") from None
    expect(isinstance(body, dict), f"the error body is {body!r}")
    expect(isinstance(body.get("error"), str) and bool(body["error"]), f"no error name: {body}")
    expect(isinstance(body.get("message"), str), f"no message: {body}")
    expect(body.get("request_id") == "check-fail-1", f"request_id is {body.get('request_id')!r}")


def unknown_method(kit: _Kit) -> None:
    """A method_name the backend does not have is answered 404 with a JSON error body."""
    answer = kit.http("/echo", method_name="no_such_method")
    expect(answer.status == 404, f"status {answer.status}, not 404")
    try:
        body = json.loads(answer.body)
    except ValueError:
        raise RuleFailed(f"the error body is not JSON: {answer.body[:200]!r}") from None
    expect(isinstance(body, dict) and bool(body.get("error")), f"the error body is {body!r}")


def no_payload(kit: _Kit) -> None:
    """A HandleRequest without a payload fails INVALID_ARGUMENT on Handle, and with
    CALL_FAILURE_INVALID_ARGUMENT on a stream."""
    _expect_status(
        lambda: kit.handle(replica_pb2.HandleRequest(request_id="check-empty")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Handle without payload",
    )
    stream = kit.stream()
    try:
        stream.send([replica_pb2.StreamCall(id=3, request=replica_pb2.HandleRequest())])
        answer = stream.next()
        expect(
            answer.id == 3 and answer.failure == replica_pb2.CALL_FAILURE_INVALID_ARGUMENT,
            f"the stream answered {answer}",
        )
        stream.close()
        stream.rest()
    finally:
        stream.cancel()


def python_call(kit: _Kit) -> None:
    """A PythonCall the replica cannot run (here: not a pickle) is answered with a
    RemoteError, never a gRPC error."""
    answer = kit.handle(
        replica_pb2.HandleRequest(
            request_id="check-call",
            call=replica_pb2.PythonCall(pickled_data=b"not a pickle", http_method="POST"),
        )
    )
    expect(answer.HasField("error"), f"the answer is {answer.WhichOneof('result')}, not error")
    expect(bool(answer.error.type), "the RemoteError has no type")


def handle_deadline(kit: _Kit) -> None:
    """A Handle call whose gRPC deadline passes fails DEADLINE_EXCEEDED, and its
    handler is cancelled."""
    key = f"deadline-{uuid.uuid4().hex[:8]}"
    _expect_status(
        lambda: kit.handle(http_call("/sleep", query=f"s=30&key={key}"), timeout=0.5),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "Handle of a 30 s call with a 0.5 s deadline",
    )
    kit.wait_for_state(key, "cancelled")


def stream_multiplexed(kit: _Kit) -> None:
    """Many calls in one message of one HandleStream run at once and are answered
    as they finish (out of order), each with its own id, 64-bit ids included; the
    answers equal Handle's."""
    prefix = uuid.uuid4().hex[:8]
    count = MULTIPLEXED_CALLS
    calls = []
    for index in range(count):
        # The first call sent sleeps longest.
        seconds = (count - index) * 0.05
        query = f"s={seconds:.2f}&key={prefix}-{index}"
        call_id = BIG_ID + index if index % 2 else index + 1
        calls.append(replica_pb2.StreamCall(id=call_id, request=http_call("/sleep", query=query)))
    expected = {call.id: f"{prefix}-{i}".encode() for i, call in enumerate(calls)}
    stream = kit.stream()
    try:
        stream.send(calls)
        # A second message on the same stream, while the first's calls run.
        stream.send([replica_pb2.StreamCall(id=999, request=http_call("/echo"))])
        stream.close()
        answers = stream.rest()
    finally:
        stream.cancel()
    ids = [answer.id for answer in answers]
    expect(sorted(ids) == sorted([*expected, 999]), f"answered ids {sorted(ids)}")
    for answer in answers:
        expect(answer.HasField("response"), f"call {answer.id} failed: {answer.failure}")
        if answer.id in expected:
            body = answer.response.http.body
            expect(body == expected[answer.id], f"call {answer.id} got the answer {body!r}")
    order = [i for i in ids if i != 999]
    expect(
        order.index(calls[-1].id) < order.index(calls[0].id),
        "the shortest call was not answered before the longest: calls of a stream must run "
        "concurrently and be answered as they finish",
    )
    echo = kit.http("/echo")
    streamed = next(a for a in answers if a.id == 999).response.http
    expect(
        (streamed.status, streamed.body, _header(streamed, "X-Seen-Path"))
        == (echo.status, echo.body, _header(echo, "X-Seen-Path")),
        "a stream's answer differs from Handle's for the same request",
    )


def stream_deadline(kit: _Kit) -> None:
    """A StreamCall whose timeout passes is answered CALL_FAILURE_DEADLINE_EXCEEDED,
    and its handler is cancelled."""
    key = f"stream-deadline-{uuid.uuid4().hex[:8]}"
    stream = kit.stream()
    try:
        call = replica_pb2.StreamCall(
            id=11, request=http_call("/sleep", query=f"s=30&key={key}"), timeout=0.5
        )
        stream.send([call])
        answer = stream.next()
        expect(
            answer.id == 11 and answer.failure == replica_pb2.CALL_FAILURE_DEADLINE_EXCEEDED,
            f"the stream answered {answer}",
        )
        stream.close()
        stream.rest()
    finally:
        stream.cancel()
    kit.wait_for_state(key, "cancelled")


def stream_cancel(kit: _Kit) -> None:
    """A call named in cancelled_ids is cancelled and gets no answer; the stream
    goes on serving the other calls."""
    key = f"cancel-{uuid.uuid4().hex[:8]}"
    stream = kit.stream()
    try:
        stream.send(
            [replica_pb2.StreamCall(id=7, request=http_call("/sleep", query=f"s=30&key={key}"))]
        )
        kit.wait_for_state(key, "running")
        stream.send(cancelled=[7])
        kit.wait_for_state(key, "cancelled")
        stream.send([replica_pb2.StreamCall(id=8, request=http_call("/echo"))])
        stream.close()
        answers = stream.rest()
    finally:
        stream.cancel()
    ids = [answer.id for answer in answers]
    expect(ids == [8], f"after the cancel the stream answered ids {ids}, not just [8]")


def stream_stays_open(kit: _Kit) -> None:
    """A stream serves calls sent one after another, each answered before the next
    is sent (a sender keeps one stream open for its whole life)."""
    stream = kit.stream()
    try:
        for call_id in range(1, 6):
            stream.send([replica_pb2.StreamCall(id=call_id, request=http_call("/echo"))])
            answer = stream.next()
            expect(answer.id == call_id, f"call {call_id} was answered as {answer.id}")
        stream.close()
        stream.rest()
    finally:
        stream.cancel()


def token_required(kit: _Kit) -> None:
    """With credentials, ReplicaService calls without a token or with a wrong one
    fail UNAUTHENTICATED (health stays open)."""
    if kit.target.token is None:
        raise Skipped("give --token (a token the replica accepts) to check its token check")
    request = http_call("/echo")
    for token in (None, "not-a-token-of-this-instance"):
        what = "without a token" if token is None else "with a wrong token"
        _expect_status(
            lambda token=token: kit.stub.Handle(  # type: ignore[misc]
                request, timeout=10, metadata=_bearer(token)
            ),
            grpc.StatusCode.UNAUTHENTICATED,
            f"Handle {what}",
        )

        def stream_call(token: str | None = token) -> None:
            messages = iter(
                [
                    replica_pb2.HandleStreamRequest(
                        calls=[replica_pb2.StreamCall(id=1, request=request)]
                    )
                ]
            )
            for _ in kit.stub.HandleStream(messages, timeout=10, metadata=_bearer(token)):
                pass

        _expect_status(stream_call, grpc.StatusCode.UNAUTHENTICATED, f"HandleStream {what}")


def reconfigure_role(kit: _Kit) -> None:
    """Reconfigure with a data token (not the controller's) fails PERMISSION_DENIED."""
    if kit.target.token is None:
        raise Skipped("give --token to check that a data token cannot Reconfigure")
    _expect_status(
        lambda: kit.stub.Reconfigure(
            replica_pb2.ReconfigureRequest(user_config_json="{}"),
            timeout=10,
            metadata=_bearer(kit.target.token),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "Reconfigure with a data token",
    )


def reconfigure(kit: _Kit) -> None:
    """Reconfigure hands the new user_config to the handler and takes new limits;
    bad values fail INVALID_ARGUMENT and change nothing."""
    if kit.target.token is not None and kit.target.control_token is None:
        raise Skipped("give --control-token (the controller's token) to check Reconfigure")
    metadata = _bearer(kit.target.control_token or kit.target.token)
    marker = uuid.uuid4().hex[:8]

    def call(request: replica_pb2.ReconfigureRequest) -> None:
        kit.stub.Reconfigure(request, timeout=CALL_TIMEOUT_S, metadata=metadata)

    call(replica_pb2.ReconfigureRequest(user_config_json=json.dumps({"marker": marker})))
    seen = json.loads(kit.http("/config").body)
    expect(seen == {"user_config": {"marker": marker}}, f"/config answered {seen}")
    call(replica_pb2.ReconfigureRequest(max_concurrent_queries=50))
    for bad, what in (
        (replica_pb2.ReconfigureRequest(max_concurrent_queries=0), "max_concurrent_queries=0"),
        (replica_pb2.ReconfigureRequest(user_config_json="{not json"), "user_config not JSON"),
    ):
        _expect_status(lambda bad=bad: call(bad), grpc.StatusCode.INVALID_ARGUMENT, what)  # type: ignore[misc]
    seen = json.loads(kit.http("/config").body)
    expect(seen == {"user_config": {"marker": marker}}, f"a refused change changed {seen}")


def graceful_stop(kit: _Kit) -> None:
    """After SIGTERM the replica says NOT_SERVING, finishes the call in flight,
    still answers a call that arrives while it drains, then closes its port."""
    pid = kit.target.stop_pid
    if pid is None:
        raise Skipped("give --stop-pid PID to check the graceful stop (it stops the replica)")
    key = f"stop-{uuid.uuid4().hex[:8]}"
    with futures.ThreadPoolExecutor(2) as pool:
        in_flight = pool.submit(kit.http, "/sleep", query=f"s=2.5&key={key}")
        kit.wait_for_state(key, "running")
        os.kill(pid, signal.SIGTERM)
        late = pool.submit(kit.http, "/echo", body=b"late", method="POST")
        _wait_not_serving(kit)
        first = in_flight.result(timeout=CALL_TIMEOUT_S)
        expect(first.status == 200 and first.body == key.encode(), "the call in flight failed")
        second = late.result(timeout=CALL_TIMEOUT_S)
        expect(second.status == 200 and second.body == b"late", "the call sent while draining")
    deadline = time.monotonic() + STOP_TIMEOUT_S
    with rpc.channel(kit.target.address, Security(tls=kit.target.tls)) as fresh:
        probe = health_pb2_grpc.HealthStub(fresh)
        while time.monotonic() < deadline:
            try:
                probe.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError as exc:
                if _code(exc) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return
            time.sleep(0.1)
    raise RuleFailed(f"the replica still answered {STOP_TIMEOUT_S:g} s after SIGTERM")


def _wait_not_serving(kit: _Kit, timeout: float = CANCEL_NOTICE_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = health_pb2.HealthCheckRequest(service="")
        if kit.health.Check(request, timeout=10).status != SERVING:
            return
        time.sleep(0.02)
    raise RuleFailed(f"health still says SERVING {timeout:g} s after SIGTERM")


RULES: list[tuple[str, Callable[[_Kit], None]]] = [
    ("health.serving", health_serving),
    ("health.unknown-service", health_unknown_service),
    ("handle.plain", plain_request),
    ("handle.request-fields", request_fields),
    ("headers.round-trip", header_round_trip),
    ("headers.repeated", repeated_response_headers),
    ("body.binary", binary_body),
    ("body.empty", empty_body),
    ("body.large", large_body),
    ("status.codes", status_codes),
    ("errors.handler-raised", handler_error),
    ("errors.unknown-method", unknown_method),
    ("errors.no-payload", no_payload),
    ("errors.python-call", python_call),
    ("deadline.handle", handle_deadline),
    ("stream.multiplexed", stream_multiplexed),
    ("stream.stays-open", stream_stays_open),
    ("stream.deadline", stream_deadline),
    ("stream.cancel", stream_cancel),
    ("auth.token-required", token_required),
    ("auth.reconfigure-role", reconfigure_role),
    ("reconfigure", reconfigure),
    # Last: it stops the replica.
    ("stop.graceful", graceful_stop),
]


def run(target: Target, only: Callable[[str], bool] = lambda rule: True) -> list[Outcome]:
    """Check every rule (those ``only`` accepts) against ``target``, in order."""
    results: list[Outcome] = []
    security = Security(tls=target.tls)
    with rpc.channel(target.address, security) as channel:
        kit = _Kit(target, channel)
        for name, rule in RULES:
            if not only(name):
                continue
            try:
                rule(kit)
            except Skipped as exc:
                results.append(Outcome(name, "skip", str(exc)))
            except RuleFailed as exc:
                results.append(Outcome(name, "fail", str(exc)))
            except grpc.RpcError as exc:
                results.append(Outcome(name, "fail", f"{_code(exc).name}: {_details(exc)}"))
            except Exception as exc:  # a broken answer must not stop the other rules
                results.append(Outcome(name, "fail", f"{type(exc).__name__}: {exc}"))
            else:
                results.append(Outcome(name, "pass"))
    return results


def describe(name: str) -> str:
    """The first line of a rule's docstring: what it checks."""
    rule = dict(RULES)[name]
    return " ".join((rule.__doc__ or "").split())


def render(results: list[Outcome]) -> str:
    """One line per rule, then the totals."""
    lines = []
    for outcome in results:
        line = f"{outcome.verdict.upper():4}  {outcome.rule}"
        if outcome.detail:
            line += f": {outcome.detail}"
        lines.append(line)
    counts = {v: sum(o.verdict == v for o in results) for v in ("pass", "fail", "skip")}
    lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return "\n".join(lines)
