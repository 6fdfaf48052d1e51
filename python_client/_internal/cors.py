"""Cross-origin resource sharing for an endpoint: the policy and its answers.

``CorsPolicy`` takes the options of Starlette's ``CORSMiddleware``
(``allow_origins``, ``allow_methods``, ``allow_headers``, ``expose_headers``,
``allow_credentials``, ``max_age``), validates them once (the client, the
controller and deploy files share it), and says which headers answer a
request: the proxy answers a preflight ``OPTIONS`` with ``preflight`` and adds
``headers_for`` to every other answer. An origin the policy does not allow
gets no CORS header at all, so the browser refuses the answer to its script.
Nothing here does I/O.

>>> policy = CorsPolicy.from_dict({"allow_origins": ["https://app.example"]})
>>> policy.headers_for("https://app.example")
[('Access-Control-Allow-Origin', 'https://app.example'), ('Vary', 'Origin')]
>>> policy.headers_for("https://evil.example")
[]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from turnout._internal.errors import InvalidArgumentError
from turnout.v1 import controller_pb2 as pb

DEFAULT_MAX_AGE_S = 600
MAX_MAX_AGE_S = 86400
MAX_ENTRIES = 100
KEYS = (
    "allow_origins",
    "allow_methods",
    "allow_headers",
    "expose_headers",
    "allow_credentials",
    "max_age",
)
# Request headers a browser sends without asking (Fetch's CORS-safelisted
# request headers), allowed by every policy, as Starlette does.
SAFELISTED_HEADERS = frozenset({"accept", "accept-language", "content-language", "content-type"})
# What "*" in allow_methods lets a preflight name.
ALL_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")

_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s?#]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class CorsRejected(ValueError):
    """A preflight the policy does not allow; the message says which part."""


@dataclass(frozen=True)
class CorsPolicy:
    """One endpoint's CORS options, validated (see the module docstring)."""

    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int = DEFAULT_MAX_AGE_S

    def __post_init__(self) -> None:
        _check(self)

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> CorsPolicy:
        """The policy for ``create_endpoint(cors=...)``'s dict: unknown keys
        and bad values raise ``InvalidArgumentError``, wrong types ``TypeError``."""
        if not isinstance(options, Mapping):
            raise TypeError(f"cors must be a dict, not {type(options).__name__}")
        unknown = sorted(str(k) for k in options if k not in KEYS)
        if unknown:
            raise InvalidArgumentError(
                f"unknown cors option(s) {', '.join(unknown)}; known: {', '.join(KEYS)}"
            )
        if "allow_origins" not in options:
            raise InvalidArgumentError("cors needs allow_origins (a list of origins, or ['*'])")
        credentials = options.get("allow_credentials", False)
        if not isinstance(credentials, bool):
            raise TypeError(
                f"cors allow_credentials must be a bool, not {type(credentials).__name__}"
            )
        max_age = options.get("max_age", DEFAULT_MAX_AGE_S)
        if isinstance(max_age, bool) or not isinstance(max_age, int):
            raise TypeError(f"cors max_age must be an int (seconds), not {type(max_age).__name__}")
        return cls(
            allow_origins=_strings(options, "allow_origins"),
            allow_methods=tuple(m.upper() for m in _strings(options, "allow_methods")),
            allow_headers=_strings(options, "allow_headers"),
            expose_headers=_strings(options, "expose_headers"),
            allow_credentials=credentials,
            max_age=max_age,
        )

    @classmethod
    def from_proto(cls, message: pb.CorsPolicy) -> CorsPolicy:
        """The policy a request carries; InvalidArgumentError for bad values."""
        return cls(
            allow_origins=tuple(message.allow_origins),
            allow_methods=tuple(m.upper() for m in message.allow_methods),
            allow_headers=tuple(message.allow_headers),
            expose_headers=tuple(message.expose_headers),
            allow_credentials=message.allow_credentials,
            max_age=message.max_age if message.HasField("max_age") else DEFAULT_MAX_AGE_S,
        )

    def to_proto(self) -> pb.CorsPolicy:
        return pb.CorsPolicy(
            allow_origins=self.allow_origins,
            allow_methods=self.allow_methods,
            allow_headers=self.allow_headers,
            expose_headers=self.expose_headers,
            allow_credentials=self.allow_credentials,
            max_age=self.max_age,
        )

    def to_dict(self) -> dict[str, Any]:
        """The options as ``from_dict`` takes them, every one filled in."""
        return {
            "allow_origins": list(self.allow_origins),
            "allow_methods": list(self.allow_methods),
            "allow_headers": list(self.allow_headers),
            "expose_headers": list(self.expose_headers),
            "allow_credentials": self.allow_credentials,
            "max_age": self.max_age,
        }

    @property
    def any_origin(self) -> bool:
        return "*" in self.allow_origins

    def allows_origin(self, origin: str) -> bool:
        return self.any_origin or origin in self.allow_origins

    def headers_for(self, origin: str | None) -> list[tuple[str, str]]:
        """What an answer to a request from ``origin`` gets: nothing for no
        origin or one not allowed."""
        if not origin or not self.allows_origin(origin):
            return []
        headers = self._origin_headers(origin)
        if self.expose_headers:
            headers.append(("Access-Control-Expose-Headers", ", ".join(self.expose_headers)))
        return headers

    def preflight(
        self, origin: str, method: str, request_headers: str, endpoint_methods: Iterable[str]
    ) -> list[tuple[str, str]]:
        """The headers of the answer to a preflight (``OPTIONS`` with
        ``Access-Control-Request-Method``); ``CorsRejected`` when its origin,
        method or headers are not allowed."""
        if not self.allows_origin(origin):
            raise CorsRejected(f"origin {origin[:200]!r} is not allowed")
        methods = self._methods(endpoint_methods)
        if method.upper() not in methods:
            allowed = ", ".join(methods)
            raise CorsRejected(f"method {method[:32]!r} is not allowed; allowed: {allowed}")
        asked = [h.strip() for h in request_headers.split(",") if h.strip()]
        if "*" in self.allow_headers:
            allowed_headers = ", ".join(asked)
        else:
            known = SAFELISTED_HEADERS | {h.lower() for h in self.allow_headers}
            refused = [h for h in asked if h.lower() not in known]
            if refused:
                raise CorsRejected(f"header(s) {', '.join(refused)[:200]} are not allowed")
            allowed_headers = ", ".join(sorted(known))
        headers = self._origin_headers(origin)
        headers.append(("Access-Control-Allow-Methods", ", ".join(methods)))
        if allowed_headers:
            headers.append(("Access-Control-Allow-Headers", allowed_headers))
        headers.append(("Access-Control-Max-Age", str(self.max_age)))
        return headers

    def _methods(self, endpoint_methods: Iterable[str]) -> tuple[str, ...]:
        if "*" in self.allow_methods:
            return ALL_METHODS
        return self.allow_methods or tuple(endpoint_methods)

    def _origin_headers(self, origin: str) -> list[tuple[str, str]]:
        if self.any_origin and not self.allow_credentials:
            headers = [("Access-Control-Allow-Origin", "*")]
        else:
            # A specific origin (or credentials, which forbid "*"): the answer
            # depends on the Origin header, so caches must key on it.
            headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        if self.allow_credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers


def _strings(options: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = options.get(key, ())
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise TypeError(f"cors {key} must be a list of str, not {type(value).__name__}")
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"cors {key} must hold str, not {type(item).__name__}")
    return tuple(value)


def _check(policy: CorsPolicy) -> None:
    if not policy.allow_origins:
        raise InvalidArgumentError("cors allow_origins needs at least one origin (or '*')")
    for key in ("allow_origins", "allow_methods", "allow_headers", "expose_headers"):
        values: tuple[str, ...] = getattr(policy, key)
        if len(values) > MAX_ENTRIES:
            raise InvalidArgumentError(f"cors {key} has more than {MAX_ENTRIES} entries")
        for value in values:
            if key == "allow_origins":
                ok = value == "*" or _ORIGIN.fullmatch(value) is not None
                what = "an origin such as 'https://app.example' (scheme and host, no path) or '*'"
            else:
                # A token ("*" is one: any method or header, or for
                # expose_headers the Fetch standard's wildcard).
                ok = _TOKEN.fullmatch(value) is not None
                what = "an HTTP method" if key == "allow_methods" else "a header name"
            if not ok:
                raise InvalidArgumentError(f"cors {key}: {value[:100]!r} is not {what}")
    if not 0 <= policy.max_age <= MAX_MAX_AGE_S:
        raise InvalidArgumentError(
            f"cors max_age must be 0 to {MAX_MAX_AGE_S} seconds, not {policy.max_age}"
        )
