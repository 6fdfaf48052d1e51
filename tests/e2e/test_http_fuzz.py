"""Bounded HTTP fuzzing of the live proxy: a fixed seed, a few thousand mutated
requests over real sockets in front of a simple echo backend.

What it asserts: no answer of 500 or more comes from the proxy itself (a
handler's own errors would carry their exception's name; the echo handler
raises none), no request leaves the socket hanging, and afterwards the proxy
is alive and serves a normal request.
"""

from __future__ import annotations

import gzip
import json
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from conftest import Deploy

import turnout

SEED = 1234
COUNT = 2500
# Seconds to wait for an answer, then (after a half-close) for the proxy to close.
ANSWER_WAIT_S = 5.0
CLOSE_WAIT_S = 5.0
# The whole run stops here at the latest, whatever COUNT says.
RUN_LIMIT_S = 240.0

# The error names the proxy itself answers with: any of these at 500 or more
# is the proxy failing, as is a 5xx that is not JSON at all.
PROXY_ERRORS = frozenset(
    {
        "BadGateway",
        "BadResponse",
        "GatewayTimeout",
        "InternalError",
        "NoBackend",
        "NoReplica",
        "Overloaded",
        "ReplicaFailed",
        "ReplicaUnavailable",
        "ResponseTooLarge",
        "Starting",
        "TooManyConnections",
    }
)


def echo(request: Any) -> dict[str, Any]:
    return {"method": request.method, "path": request.path, "length": len(request.get_data())}


@dataclass
class Fuzzed:
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    # Sent knowing that it is incomplete: the proxy may wait for the rest.
    incomplete: bool = False
    raw: bytes | None = None
    notes: list[str] = field(default_factory=list)

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        head = self.method + b" " + self.target + b" " + self.version + b"\r\n"
        head += b"".join(name + b": " + value + b"\r\n" for name, value in self.headers)
        return head + b"\r\n" + self.body


def noise(rng: random.Random, size: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(size))


def mutate(rng: random.Random, route: bytes) -> Fuzzed:
    body = rng.choice([b"", b"hello", noise(rng, rng.randrange(1, 200))])
    request = Fuzzed(
        method=rng.choice([b"GET", b"POST"]),
        target=route,
        version=b"HTTP/1.1",
        headers=[(b"Host", b"127.0.0.1"), (b"Content-Length", str(len(body)).encode())],
        body=body,
    )
    for _ in range(rng.randrange(1, 4)):
        rng.choice(MUTATIONS)(rng, request, route)
    return request


def bad_method(rng: random.Random, r: Fuzzed, route: bytes) -> None:
    r.method = rng.choice(
        [b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"get", b"G\x00T", b"", b"X" * 300,
         b"GET POST", noise(rng, 5), b"CONNECT", b"TRACE"]
    )  # fmt: skip
    r.notes.append("method")


def odd_target(rng: random.Random, r: Fuzzed, route: bytes) -> None:
    r.target = rng.choice(
        [
            route + b"?x=1&y=%ZZ&z",
            route + b"%00",
            b"/" + route,
            route + b"/../" + route[1:],
            b"*",
            b"http://127.0.0.1" + route,
            b"/%ff%fe%fd",
            b"/\xff\xfe" + route,
            route + b"?\xff=\xfe",
            route + b"#frag",
            b"/-/routes?x",
            b"/-/\xff",
            b"/-/healthz/../metrics",
            b"",
            b"/" + b"a" * rng.choice([100, 5000, 20000]),
            route + b"?" + b"q=" * 3000,
            noise(rng, 10),
        ]
    )
    r.notes.append("target")


def odd_version(rng: random.Random, r: Fuzzed, route: bytes) -> None:
    r.version = rng.choice(
        [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1.1x", b"", b"http/1.1", b"HTTP/1"]
    )
    r.notes.append("version")


def odd_header(rng: random.Random, r: Fuzzed, route: bytes) -> None:
    name = rng.choice(
        [b"X-Fuzz", b"Host", b"X-Request-Id", b"X-Serve-Call-Method", b"X-Serve-Shard-Key",
         b"X-Serve-Timeout-Ms", b"Content-Type", b"Accept-Encoding", b"Cookie", b"Expect",
         b"Upgrade", b"Connection", b"X Space", b"X:Colon", b"", noise(rng, 4), b"X-\xff"]
    )  # fmt: skip
    value = rng.choice(
        [b"\xff\xfe", b"caf\xe9", b"a\x00b", b"a\x7fb", b" padded ", b"\t", b"",
         b"x" * rng.choice([200, 8000, 9000, 70000]), b"100-continue", b"websocket",
         b"close", b"5_000", b"\xef\xbc\x95", b"-1", b"99999999999999999999", b"1e3",
         b'"quoted" [field] rid=forged', noise(rng, 20)]
    )  # fmt: skip
    r.headers.insert(rng.randrange(len(r.headers) + 1), (name, value))
    r.notes.append("header")


def many_headers(rng: random.Random, r: Fuzzed, route: bytes) -> None:
    r.headers += [(b"X-Many-%d" % i, b"v") for i in range(rng.choice([50, 150, 300]))]
    r.notes.append("many headers")


def lying_length(rng: random.Random, r: Fuzzed, route: bytes) -> None:
    longer = [str(len(r.body) + 1).encode(), str(len(r.body) + 50).encode()]
    length = rng.choice([b"-1", b"abc", b"1.5", b" 3", b"0x10", b"", *longer, b"0", b"9" * 20])
    r.headers = [(n, v) for n, v in r.headers if n.lower() != b"content-length"]
    r.headers.append((b"Content-Length", length))
    if rng.random() < 0.3:
        r.headers.append((b"Content-Length", str(len(r.body)).encode()))
    r.incomplete = True
    r.notes.append("content-length")


def chunked(rng: random.Random, r: Fuzzed, route: bytes) -> None:
    r.headers = [(n, v) for n, v in r.headers if n.lower() != b"content-length"]
    r.headers.append(
        (b"Transfer-Encoding", rng.choice([b"chunked", b"gzip, chunked", b"chunked, x"]))
    )
    if rng.random() < 0.3:
        r.headers.append((b"Content-Length", b"5"))
    r.body = rng.choice(
        [b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhel", b"-1\r\n\r\n",
         b"5\r\nhelloXX0\r\n\r\n", b"ffffffffffffffff\r\n", b"0\r\nTrailer: x\r\n\r\n",
         b"3;ext=\xff\r\nabc\r\n0\r\n\r\n", noise(rng, 30)]
    )  # fmt: skip
    r.incomplete = True
    r.notes.append("chunked")


def gzip_body(rng: random.Random, r: Fuzzed, route: bytes) -> None:
    r.method = b"POST"
    r.body = rng.choice(
        [gzip.compress(b"hello"), b"\x1f\x8b\x08\x00garbage", gzip.compress(b"x" * 1000)[:-8],
         noise(rng, 40)]
    )  # fmt: skip
    r.headers = [(n, v) for n, v in r.headers if n.lower() != b"content-length"]
    r.headers += [
        (b"Content-Encoding", rng.choice([b"gzip", b"deflate", b"br", b"gzip, gzip", b"x"])),
        (b"Content-Length", str(len(r.body)).encode()),
    ]
    r.notes.append("gzip")


def raw_damage(rng: random.Random, r: Fuzzed, route: bytes) -> None:
    data = bytearray(r.encode())
    kind = rng.randrange(4)
    if kind == 0:  # flip some bytes
        for _ in range(rng.randrange(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # cut it short
        del data[rng.randrange(1, len(data)) :]
        r.incomplete = True
    elif kind == 2:  # bare LF or CR line endings
        data = bytearray(bytes(data).replace(b"\r\n", rng.choice([b"\n", b"\r", b"\r\r\n"])))
        r.incomplete = True
    else:  # bytes inserted anywhere
        at = rng.randrange(len(data))
        data[at:at] = noise(rng, rng.randrange(1, 10))
        r.incomplete = True
    r.raw = bytes(data)
    r.notes.append(f"raw {kind}")


MUTATIONS = [
    bad_method,
    odd_target,
    odd_version,
    odd_header,
    odd_header,
    many_headers,
    lying_length,
    chunked,
    gzip_body,
    raw_damage,
]


@dataclass
class Outcome:
    status: int | None  # None: closed without an answer
    body: bytes = b""
    hung: bool = False


def exchange(port: int, data: bytes, incomplete: bool) -> Outcome:
    """Send ``data``; read one answer (or the close). An incomplete request is
    half-closed at once; another one is, if no answer came in time."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WAIT_S) as sock:
        try:
            sock.sendall(data)
            if incomplete:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # closed while sending: what was answered is read below
        received = b""
        half_closed = incomplete
        deadline = time.monotonic() + ANSWER_WAIT_S
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                if half_closed:
                    return Outcome(None, received, hung=True)
                # Perhaps it waits for more of a request that only looks whole.
                half_closed = True
                deadline = time.monotonic() + CLOSE_WAIT_S
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            except OSError:
                piece = b""
            if not piece:
                break
            received += piece
            if _complete(received, data.startswith(b"HEAD ")):
                break
    if not received.startswith(b"HTTP/"):
        return Outcome(None, received)
    return Outcome(int(received.split(b" ", 2)[1]), received.partition(b"\r\n\r\n")[2])


def _complete(data: bytes, head_only: bool) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if head_only:
        return True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def proxy_failure(outcome: Outcome) -> str | None:
    """Why this answer counts against the proxy, or None."""
    if outcome.hung:
        return "hung"
    if outcome.status is None or outcome.status < 500:
        return None
    try:
        error = json.loads(outcome.body)["error"]
    except (ValueError, KeyError, TypeError):
        return f"{outcome.status} that is not JSON: {outcome.body[:200]!r}"
    if error in PROXY_ERRORS:
        return f"{outcome.status} {error}: {outcome.body[:200]!r}"
    return None  # the handler's (or its replica's) own error


def test_fuzzed_requests_never_get_a_5xx_from_the_proxy_nor_hang_it(
    client: turnout.Client, deploy: Deploy
) -> None:
    app = deploy(echo, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
    port = int(client.http_address.rsplit(":", 1)[1])
    proxy_log = Path(client.log_dir) / "proxy.log"
    logged_before = proxy_log.stat().st_size
    rng = random.Random(SEED)
    statuses: Counter[int | None] = Counter()
    failures: list[str] = []
    stop_at = time.monotonic() + RUN_LIMIT_S
    sent = 0
    for _ in range(COUNT):
        if time.monotonic() > stop_at:
            break
        request = mutate(rng, app.route.encode())
        outcome = exchange(port, request.encode(), request.incomplete)
        statuses[outcome.status] += 1
        sent += 1
        why = proxy_failure(outcome)
        if why is not None:
            failures.append(f"{why} <- {request.notes}: {request.encode()[:300]!r}")
    assert not failures, f"{len(failures)} of {sent}: " + "\n".join(failures[:20])
    # Most of them were answered, and some got through to the handler.
    assert statuses[200] > 0 and sum(statuses.values()) == sent
    assert sent >= 1000, f"only {sent} requests in {RUN_LIMIT_S} s"
    # Still alive and serving.
    reply = requests.post(app.url, data=b"after", timeout=30)
    assert reply.status_code == 200 and reply.json()["length"] == 5
    assert requests.get(client.http_address + "/-/healthz", timeout=30).status_code == 200
    # No client can fill the log with tracebacks.
    with proxy_log.open("rb") as log:
        log.seek(logged_before)
        logged = log.read().decode(errors="replace")
    assert "Traceback" not in logged and " ERROR " not in logged, logged[-3000:]
