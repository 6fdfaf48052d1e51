"""Checks on every admin request, before anything changes.

Each function returns the normalised value or raises one of ``turnout.errors``;
the controller's servicer turns those into gRPC status codes, and the client
and the deploy-file checks run the same functions first, so that a refused
value fails there with the same message.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turnout._internal import autoscaling, backend_fields, command_replica
from turnout._internal.backend_fields import method_names
from turnout._internal.errors import InvalidArgumentError
from turnout.v1 import controller_pb2 as pb

HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
DEFAULT_METHODS = ["GET"]
# Paths under /-/ belong to the proxy (/-/routes, /-/healthz, /-/metrics).
SYSTEM_PREFIX = "/-/"
_DEFAULTS = backend_fields.defaults_proto()
DEFAULT_MAX_CONCURRENT_QUERIES = _DEFAULTS.max_concurrent_queries
MAX_NAME_LENGTH = 200
MAX_ROUTE_LENGTH = 1024
MAX_METHODS = len(HTTP_METHODS)
# Entries of one set_traffic call, and shadows per endpoint.
MAX_TRAFFIC_ENTRIES = 100
# JSON config (init_args_json, user_config_json) nests at most this deep;
# deeper input would exhaust the parsers' recursion (here and in replicas).
MAX_JSON_DEPTH = 100
# Environment of a replica: what exec() and a sane environment accept.
MAX_ENV_VARS = 256
MAX_ENV_NAME_LENGTH = 256
MAX_ENV_VALUE_BYTES = 32 * 1024
MAX_ENV_TOTAL_BYTES = 256 * 1024
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
# Smallest per-replica memory limit: below it the interpreter and gRPC
# cannot even start.
MIN_MEMORY_BYTES = 128 * 2**20
# A command backend's argv, and its working directory.
MAX_COMMAND_ARGS = 256
MAX_PATH_LENGTH = 4096
# What an error message repeats of the input, at most.
MAX_SHOWN_CHARS = 100
WEIGHT_TOLERANCE = 1e-6

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def truncated(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis if cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def shown(value: object) -> str:
    """``repr(value)`` cut to ``MAX_SHOWN_CHARS``: what an error may repeat of
    the input, so that a huge value never comes back in a message (or a log)."""
    return truncated(repr(value), MAX_SHOWN_CHARS)


def name(value: str, what: str) -> str:
    """A backend tag or endpoint name: non-empty, printable, bounded."""
    if not value:
        raise InvalidArgumentError(f"{what} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgumentError(
            f"{what} {shown(value)} is longer than {MAX_NAME_LENGTH} characters"
        )
    if not value.isprintable():
        raise InvalidArgumentError(f"{what} {shown(value)} contains control characters")
    return value


def json_text(value: str, what: str) -> object:
    """Parsed JSON, at most ``MAX_JSON_DEPTH`` levels deep."""
    try:
        parsed = json.loads(value)
    except RecursionError:
        raise InvalidArgumentError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidArgumentError(f"{what} is not valid JSON: {shown(str(exc))}") from None
    # Iteratively, so that the check itself cannot run out of stack.
    level: list[object] = [parsed]
    for _ in range(MAX_JSON_DEPTH):
        level = [
            child
            for item in level
            if isinstance(item, list | dict)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return parsed
    raise InvalidArgumentError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")


def route(value: str) -> str:
    """An HTTP route: empty (no HTTP exposure) or an absolute path."""
    if not value:
        return ""
    if len(value) > MAX_ROUTE_LENGTH:
        raise InvalidArgumentError(
            f"route {shown(value)} is longer than {MAX_ROUTE_LENGTH} characters"
        )
    if not value.startswith("/"):
        raise InvalidArgumentError(f"route {shown(value)} must start with '/'")
    if any(c in value for c in "?# ") or not value.isprintable():
        raise InvalidArgumentError(
            f"route {shown(value)} must be a plain path (no '?', '#' or spaces)"
        )
    if value.startswith(SYSTEM_PREFIX) or value == SYSTEM_PREFIX.rstrip("/"):
        raise InvalidArgumentError(
            f"route {shown(value)} is reserved: paths under /-/ are the proxy's"
        )
    return value


def methods(values: list[str]) -> list[str]:
    """HTTP methods, upper-cased and de-duplicated; empty means GET."""
    if not values:
        return list(DEFAULT_METHODS)
    if len(values) > MAX_METHODS:
        raise InvalidArgumentError(f"at most {MAX_METHODS} methods, got {len(values)}")
    result: list[str] = []
    for value in values:
        upper = value.upper()
        if upper not in HTTP_METHODS:
            known = ", ".join(sorted(HTTP_METHODS))
            raise InvalidArgumentError(f"unknown HTTP method {shown(value)}; use one of {known}")
        if upper not in result:
            result.append(upper)
    return result


def spec(value: pb.BackendSpec) -> pb.BackendSpec:
    source = value.WhichOneof("source")
    if source is None:
        raise InvalidArgumentError("backend spec needs pickled_callable, import_path or command")
    if source == "command":
        command(value.command)
        if value.pickled_init_args or value.init_args_json:
            raise InvalidArgumentError(
                "a command backend takes no init args: give them to the program in its argv"
            )
    if source == "import_path" and not _IMPORT_PATH.match(value.import_path):
        raise InvalidArgumentError(
            f"import path {shown(value.import_path)} must look like 'package.module:attribute'"
        )
    if source == "pickled_callable" and not value.pickled_callable:
        raise InvalidArgumentError("pickled_callable is empty")
    if value.pickled_init_args and value.init_args_json:
        raise InvalidArgumentError(
            "give init args as pickled_init_args or init_args_json, not both"
        )
    if value.init_args_json:
        args = json_text(value.init_args_json, "init_args_json")
        if not isinstance(args, list):
            raise InvalidArgumentError("init_args_json must be a JSON array")
    return value


def command(value: pb.Command) -> pb.Command:
    """A command backend's program: argv, env, cwd and readiness timeout."""
    argv = list(value.argv)
    if not argv or not argv[0]:
        raise InvalidArgumentError("command argv must name a program, e.g. ['node', 'replica.js']")
    if len(argv) > MAX_COMMAND_ARGS:
        raise InvalidArgumentError(
            f"command argv has {len(argv)} arguments; at most {MAX_COMMAND_ARGS}"
        )
    for arg in argv:
        if "\0" in arg:
            raise InvalidArgumentError(f"command argument {shown(arg)} contains a NUL byte")
        if len(arg.encode("utf-8", "surrogatepass")) > MAX_ENV_VALUE_BYTES:
            raise InvalidArgumentError(
                f"command argument {shown(arg)} is longer than {MAX_ENV_VALUE_BYTES} bytes"
            )
    _environment(dict(value.env))
    reserved = sorted(set(value.env) & set(command_replica.NAMES))
    if reserved:
        raise InvalidArgumentError(
            f"command env sets {', '.join(reserved)}, which Turnout sets itself "
            "(docs/replica-protocol.md)"
        )
    if value.cwd:
        if "\0" in value.cwd or len(value.cwd) > MAX_PATH_LENGTH:
            raise InvalidArgumentError(f"command cwd {shown(value.cwd)} is not a usable path")
        if not value.cwd.startswith("/"):
            raise InvalidArgumentError(
                f"command cwd {shown(value.cwd)} must be an absolute path (the controller's "
                "working directory is not the client's)"
            )
    if value.HasField("ready_timeout"):
        timeout = value.ready_timeout
        low, high = backend_fields.MIN_HEALTH_CHECK_S, backend_fields.MAX_SECONDS
        if not math.isfinite(timeout) or not low <= timeout <= high:
            raise InvalidArgumentError(
                f"command ready_timeout must be a number of seconds from {low:g} to {high:g}, "
                f"got {timeout}"
            )
    return value


def config_update(update: pb.BackendConfig) -> None:
    """Checks the fields set in ``update`` (a full or partial config)."""
    backend_fields.check_proto(update)
    if update.HasField("user_config_json"):
        json_text(update.user_config_json, "user_config_json")
    if update.HasField("http_call_methods"):
        names = method_names(update.http_call_methods.names)
        del update.http_call_methods.names[:]
        update.http_call_methods.names.extend(names)
    if update.HasField("autoscaling"):
        if update.HasField("num_replicas"):
            raise InvalidArgumentError(
                "num_replicas and autoscaling_config are mutually exclusive: an autoscaled "
                "backend's replica count is the controller's to decide (give initial_replicas "
                "in autoscaling_config to choose where it starts)"
            )
        autoscaling.check(update.autoscaling)


def full_config(requested: pb.BackendConfig) -> pb.BackendConfig:
    """``requested`` with every unset field given its default (an autoscaled
    backend's num_replicas: the replicas it starts with)."""
    config_update(requested)
    config = pb.BackendConfig()
    config.CopyFrom(_DEFAULTS)
    config.MergeFrom(requested)
    if config.HasField("autoscaling"):
        config.num_replicas = autoscaling.policy(config.autoscaling).start_replicas
    return config


def merged_config(current: pb.BackendConfig, update: pb.BackendConfig) -> pb.BackendConfig:
    """``current`` with the fields set in ``update`` (checked) changed.

    Lists and the autoscaling config are replaced, not merged. Turning
    autoscaling on keeps the replicas running, within its bounds; setting
    num_replicas alone turns it off.
    """
    config_update(update)
    config = pb.BackendConfig()
    config.CopyFrom(current)
    config.MergeFrom(update)
    if update.HasField("http_call_methods"):
        # MergeFrom appends repeated fields: the update replaces the list.
        config.http_call_methods.CopyFrom(update.http_call_methods)
    if update.HasField("autoscaling"):
        config.autoscaling.CopyFrom(update.autoscaling)
        config.num_replicas = autoscaling.policy(config.autoscaling).clamp(current.num_replicas)
    elif update.HasField("num_replicas"):
        config.ClearField("autoscaling")
    return config


# The keys of replica options as Python and deploy files give them (memory is
# the message's memory_bytes).
REPLICA_OPTION_KEYS = (
    "num_cpus",
    "num_gpus",
    "env",
    "memory",
    "resources",
    "node_selector",
    "max_replicas_per_node",
    "runtime_env",
)
# The options only a Ray instance can honour (ReplicaOptions fields 5-8).
RAY_OPTION_KEYS = ("resources", "node_selector", "max_replicas_per_node", "runtime_env")
# Custom Ray resources and node selector entries of one backend.
MAX_PLACEMENT_ENTRIES = 32
MAX_PLACEMENT_NAME_LENGTH = 128
MAX_SELECTOR_VALUE_LENGTH = 256
_PLACEMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")
# Ray's own resources, asked for through num_cpus, num_gpus, memory.
RESERVED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
MAX_REPLICAS_PER_NODE = 1_000_000
MAX_RUNTIME_ENV_BYTES = 64 * 1024
RUNTIME_ENV_KEYS = ("working_dir", "pip", "env_vars", "py_modules")
# Most entries of a runtime_env's py_modules.
MAX_PY_MODULES = 64


@dataclass(frozen=True)
class OptionProblem:
    """What is wrong with one replica option: ``key`` (empty for the options
    as a whole) and ``message``, which does not repeat the key; ``error`` is
    the class the Python API raises for it."""

    key: str
    message: str
    error: type[Exception] = InvalidArgumentError

    def exception(self) -> Exception:
        return self.error(f"{self.key} {self.message}" if self.key else self.message)


def replica_option_problems(
    options: Mapping[str, Any],
) -> tuple[pb.ReplicaOptions | None, list[OptionProblem]]:
    """Replica options given as a mapping (``create_backend``'s
    ``replica_options``, a deploy file's): the message, or None and every
    problem, in key order. Keys and types first, then the bounds
    (``replica_options``)."""
    found: list[OptionProblem] = []
    unknown = sorted(str(k) for k in options if k not in REPLICA_OPTION_KEYS)
    if unknown:
        known = ", ".join(sorted(REPLICA_OPTION_KEYS))
        found.append(
            OptionProblem("", f"unknown replica option(s) {', '.join(unknown)}; known: {known}")
        )
    message = pb.ReplicaOptions()
    for key in ("num_cpus", "num_gpus"):
        value = options.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            found.append(OptionProblem(key, f"must be a number, got {_type(value)}", TypeError))
        else:
            setattr(message, key, float(value))
    env = options.get("env", {})
    if not is_str_map(env):
        found.append(
            OptionProblem("env", "must map names to str values (quote numbers)", TypeError)
        )
    else:
        message.env.update(env)
    memory = options.get("memory", 0)
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
        error = InvalidArgumentError if isinstance(memory, int) and memory < 0 else TypeError
        found.append(
            OptionProblem(
                "memory",
                f"must be a whole number of bytes (0 = no limit), got {shown(memory)}",
                error,
            )
        )
    else:
        message.memory_bytes = memory
    found.extend(_ray_option_problems(options, message))
    if found:
        return None, found
    try:
        return replica_options(message), []
    except InvalidArgumentError as exc:
        return None, [OptionProblem("", str(exc))]


def replica_options_from(options: Mapping[str, Any] | None) -> pb.ReplicaOptions:
    """``replica_option_problems`` for the Python API: the message, or the
    first problem raised (TypeError for a wrong type, else InvalidArgumentError).

    Example::

        replica_options_from({"num_cpus": 1, "env": {"MODEL": "tiny"}})
    """
    if options is None:
        return pb.ReplicaOptions()
    if not isinstance(options, Mapping):
        raise TypeError(f"replica_options must be a dict, got {_type(options)}")
    message, found = replica_option_problems(options)
    if found:
        raise found[0].exception()
    assert message is not None
    return message


def _ray_option_problems(
    options: Mapping[str, Any], message: pb.ReplicaOptions
) -> list[OptionProblem]:
    """The types of the Ray placement options, filled into ``message``."""
    found: list[OptionProblem] = []
    resources = options.get("resources", {})
    if not isinstance(resources, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in resources.items()
    ):
        found.append(OptionProblem("resources", "must map resource names to numbers", TypeError))
    else:
        for key, amount in resources.items():
            message.resources[key] = float(amount)
    selector = options.get("node_selector", {})
    if not is_str_map(selector):
        found.append(
            OptionProblem("node_selector", "must map label names to str values", TypeError)
        )
    else:
        message.node_selector.update(selector)
    most = options.get("max_replicas_per_node", 0)
    if isinstance(most, bool) or not isinstance(most, int):
        found.append(
            OptionProblem(
                "max_replicas_per_node",
                f"must be a whole number (0 = no limit), got {_type(most)}",
                TypeError,
            )
        )
    elif not 0 <= most <= MAX_REPLICAS_PER_NODE:
        found.append(
            OptionProblem(
                "max_replicas_per_node",
                f"must be 0 (no limit) to {MAX_REPLICAS_PER_NODE}, got {most}",
            )
        )
    else:
        message.max_replicas_per_node = most
    runtime_env = options.get("runtime_env")
    if runtime_env is not None and not isinstance(runtime_env, Mapping):
        found.append(
            OptionProblem(
                "runtime_env",
                f"must be a dict (working_dir, py_modules, pip, env_vars), got "
                f"{_type(runtime_env)}",
                TypeError,
            )
        )
    elif runtime_env:
        try:
            message.runtime_env_json = json.dumps(dict(runtime_env), sort_keys=True)
        except (TypeError, ValueError, RecursionError):
            found.append(
                OptionProblem("runtime_env", "must be JSON: dicts, lists, str, numbers", TypeError)
            )
    return found


def replica_options_dict(options: pb.ReplicaOptions) -> dict[str, Any]:
    """``options`` with the keys ``replica_options_from`` takes (the Ray
    placement options only where set, so one-machine options read as before)."""
    shown: dict[str, Any] = {
        "num_cpus": options.num_cpus,
        "num_gpus": options.num_gpus,
        "env": dict(sorted(options.env.items())),
        "memory": options.memory_bytes,
    }
    ray: dict[str, Any] = {
        "resources": dict(sorted(options.resources.items())),
        "node_selector": dict(sorted(options.node_selector.items())),
        "max_replicas_per_node": options.max_replicas_per_node,
        "runtime_env": json.loads(options.runtime_env_json) if options.runtime_env_json else {},
    }
    shown.update({key: value for key, value in ray.items() if value})
    return shown


def ray_options_used(options: pb.ReplicaOptions, num_replicas: int) -> list[str]:
    """The Ray-only options ``options`` set that would change something on
    one machine (a ``max_replicas_per_node`` of at least ``num_replicas``
    changes nothing there)."""
    used = [
        key
        for key, value in (
            ("resources", options.resources),
            ("node_selector", options.node_selector),
            ("runtime_env", options.runtime_env_json),
        )
        if value
    ]
    if 0 < options.max_replicas_per_node < num_replicas:
        used.append("max_replicas_per_node")
    return used


def is_str_map(value: object) -> bool:
    """A mapping of str names to str values (an environment, node labels)."""
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


def _type(value: object) -> str:
    return type(value).__name__


def replica_options(options: pb.ReplicaOptions) -> pb.ReplicaOptions:
    for field in ("num_cpus", "num_gpus"):
        value = getattr(options, field)
        if not math.isfinite(value) or value < 0:
            raise InvalidArgumentError(f"{field} must be a finite number >= 0, got {value}")
    if options.num_gpus > 1 and options.num_gpus != int(options.num_gpus):
        raise InvalidArgumentError(
            f"num_gpus {options.num_gpus} mixes whole and shared GPUs; use a whole number "
            "or a fraction below 1"
        )
    if options.memory_bytes and options.memory_bytes < MIN_MEMORY_BYTES:
        raise InvalidArgumentError(
            f"memory_bytes must be 0 (no limit) or at least {MIN_MEMORY_BYTES} "
            f"({MIN_MEMORY_BYTES // 2**20} MiB: a replica needs that much to start), "
            f"got {options.memory_bytes}"
        )
    _environment(dict(options.env))
    _placement(dict(options.resources), dict(options.node_selector))
    if options.max_replicas_per_node > MAX_REPLICAS_PER_NODE:
        raise InvalidArgumentError(
            f"max_replicas_per_node must be 0 (no limit) to {MAX_REPLICAS_PER_NODE}, "
            f"got {options.max_replicas_per_node}"
        )
    if options.runtime_env_json:
        runtime_env(options.runtime_env_json)
    return options


def _placement(resources: dict[str, float], selector: dict[str, str]) -> None:
    """Custom Ray resources and a node selector: names Ray takes, bounded."""
    for what, entries in (("resources", resources), ("node_selector", selector)):
        if len(entries) > MAX_PLACEMENT_ENTRIES:
            raise InvalidArgumentError(
                f"{what}: at most {MAX_PLACEMENT_ENTRIES} entries, got {len(entries)}"
            )
        for key in entries:
            if len(key) > MAX_PLACEMENT_NAME_LENGTH or not _PLACEMENT_NAME.match(key):
                raise InvalidArgumentError(
                    f"{what} name {shown(key)} is not valid: use letters, digits, '_', '-', "
                    f"'.', '/' (not first: digits, '-', '.', '/'), "
                    f"at most {MAX_PLACEMENT_NAME_LENGTH} characters"
                )
    for key, amount in resources.items():
        if key in RESERVED_RESOURCES:
            raise InvalidArgumentError(
                f"resources {key!r} is Ray's own; use num_cpus, num_gpus or memory"
            )
        if not math.isfinite(amount) or amount <= 0:
            raise InvalidArgumentError(
                f"resources {key!r} must be a finite number > 0, got {amount}"
            )
    for key, value in selector.items():
        if not value or len(value) > MAX_SELECTOR_VALUE_LENGTH or not value.isprintable():
            raise InvalidArgumentError(
                f"node_selector {key!r} value {shown(value)} must be 1 to "
                f"{MAX_SELECTOR_VALUE_LENGTH} printable characters"
            )


def _is_uri(value: object) -> bool:
    return isinstance(value, str) and "://" in value


def runtime_env(value: str, instance: bool = False) -> dict[str, Any]:
    """A Ray runtime_env (JSON): an object with only the keys
    ``RUNTIME_ENV_KEYS``, bounded in size and depth; env_vars maps str to str,
    pip and py_modules are lists of str. A backend's (the default) must name
    its working_dir and py_modules by URI; the instance's (``instance``,
    ``--ray-runtime-env``, uploaded by Ray from the controller's machine) may
    name local folders, which must exist.

    Example::

        runtime_env('{"working_dir": ".", "pip": ["numpy"]}', instance=True)
    """
    name = "--ray-runtime-env" if instance else "runtime_env"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_RUNTIME_ENV_BYTES:
        raise InvalidArgumentError(f"{name} is {size} bytes; at most {MAX_RUNTIME_ENV_BYTES}")
    parsed = json_text(value, name)
    if not isinstance(parsed, dict):
        raise InvalidArgumentError(f"{name} must be a JSON object")
    if instance:
        unknown = sorted(k for k in parsed if k not in RUNTIME_ENV_KEYS)
        if unknown:
            raise InvalidArgumentError(
                f"{name} keys {shown(unknown)} are not supported; known: "
                f"{', '.join(RUNTIME_ENV_KEYS)}"
            )
        _runtime_env_lists(parsed, name)
        _instance_paths(parsed)
        return parsed
    unknown = sorted(k for k in parsed if k not in RUNTIME_ENV_KEYS)
    if unknown:
        raise InvalidArgumentError(
            f"runtime_env keys {shown(unknown)} are not supported; known: "
            f"{', '.join(RUNTIME_ENV_KEYS)}"
        )
    # Ray uploads a local folder only for the job's runtime_env (the
    # instance's --ray-runtime-env); an actor's must be fetched from a URI.
    if "working_dir" in parsed and not (
        isinstance(parsed["working_dir"], str) and "://" in parsed["working_dir"]
    ):
        raise InvalidArgumentError(
            "runtime_env working_dir must be a URI (s3://, gs://, https://...zip); a local "
            "folder goes in the instance's --ray-runtime-env"
        )
    modules = parsed.get("py_modules", [])
    if isinstance(modules, list) and not all(_is_uri(m) for m in modules):
        raise InvalidArgumentError(
            "runtime_env py_modules must be URIs (s3://, gs://, https://...zip); local "
            "folders go in the instance's --ray-runtime-env"
        )
    _runtime_env_lists(parsed, name)
    return parsed


def _instance_paths(parsed: dict[str, Any]) -> None:
    """The instance's working_dir and py_modules: URIs, or folders (or
    files) here that Ray uploads: they must exist."""
    working_dir = parsed.get("working_dir")
    if working_dir is not None:
        if not isinstance(working_dir, str) or not working_dir:
            raise InvalidArgumentError(
                "--ray-runtime-env working_dir must be a folder or a URI (a str)"
            )
        if not _is_uri(working_dir) and not os.path.isdir(working_dir):
            raise InvalidArgumentError(
                f"--ray-runtime-env working_dir {shown(working_dir)} is not a folder here"
            )
    modules = parsed.get("py_modules", [])
    if isinstance(modules, list):
        for module in modules:
            if isinstance(module, str) and not _is_uri(module) and not os.path.exists(module):
                raise InvalidArgumentError(
                    f"--ray-runtime-env py_modules entry {shown(module)} does not exist here"
                )


def _runtime_env_lists(parsed: dict[str, Any], name: str) -> None:
    pip = parsed.get("pip", [])
    if not isinstance(pip, list) or not all(isinstance(p, str) and p for p in pip):
        raise InvalidArgumentError(f"{name} pip must be a list of requirement strs")
    modules = parsed.get("py_modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise InvalidArgumentError(f"{name} py_modules must be a list of strs")
    if len(modules) > MAX_PY_MODULES:
        raise InvalidArgumentError(f"{name} py_modules: at most {MAX_PY_MODULES} entries")
    env_vars = parsed.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(isinstance(v, str) for v in env_vars.values()):
        raise InvalidArgumentError(f"{name} env_vars must map names to str values")
    try:
        _environment(env_vars)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{name} env_vars: {exc}") from None


def _environment(env: dict[str, str]) -> None:
    """Names exec() and shells accept, values without NUL, sizes bounded."""
    if len(env) > MAX_ENV_VARS:
        raise InvalidArgumentError(f"at most {MAX_ENV_VARS} environment variables, got {len(env)}")
    total = 0
    for key, value in env.items():
        if len(key) > MAX_ENV_NAME_LENGTH or not _ENV_NAME.match(key):
            raise InvalidArgumentError(
                f"environment variable name {shown(key)} is not valid: use letters, digits "
                f"and '_' (not first: digits, '.', '-'), at most {MAX_ENV_NAME_LENGTH} characters"
            )
        if "\0" in value:
            raise InvalidArgumentError(f"environment variable {shown(key)} contains a NUL byte")
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_ENV_VALUE_BYTES:
            raise InvalidArgumentError(
                f"environment variable {shown(key)} is {size} bytes; "
                f"at most {MAX_ENV_VALUE_BYTES} per value"
            )
        total += len(key) + size
    if total > MAX_ENV_TOTAL_BYTES:
        raise InvalidArgumentError(
            f"replica environment is {total} bytes; at most {MAX_ENV_TOTAL_BYTES} in all"
        )


def request_timeout(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise InvalidArgumentError(f"request_timeout must be a number >= 0, got {value}")
    return value


def proportion(value: float) -> float:
    """Share of requests copied to a shadow: 0 (remove) to 1."""
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise InvalidArgumentError(f"proportion must be between 0 and 1, got {value}")
    return value


def traffic(weights: dict[str, float]) -> dict[str, float]:
    """Weights >= 0 and finite that sum to 1."""
    if len(weights) > MAX_TRAFFIC_ENTRIES:
        raise InvalidArgumentError(
            f"at most {MAX_TRAFFIC_ENTRIES} backends per endpoint, got {len(weights)}"
        )
    for backend, weight in weights.items():
        if not math.isfinite(weight) or weight < 0:
            raise InvalidArgumentError(
                f"weight of {shown(backend)} must be a finite number >= 0, got {weight}"
            )
    total = math.fsum(weights.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise InvalidArgumentError(f"traffic weights must sum to 1, got {total}")
    return dict(weights)
