"""Declarative deploy files: parse, validate, and plan the changes that make an
instance match one.

This module is pure: no processes, no network. ``load_file`` turns a YAML or
JSON file into a ``DeployFile``; ``plan`` compares it with an instance's
``State`` and returns the ``Plan`` that ``turnout deploy`` applies (see
``turnout._deploy_apply``). The format is documented in docs/operations.md::

    backends:
      greeter:
        import_path: myapp.models:Greeter   # "package.module:attribute"
        # or, a program in any language (docs/replica-protocol.md):
        # command: {argv: [node, replica.js], cwd: ., env: {}, ready_timeout: 120}
        init_args: ["hello"]                # JSON values, given to the class
        config: {num_replicas: 2}           # BackendConfig fields
        replica_options: {num_cpus: 1}      # num_cpus, num_gpus, env, memory (bytes), ...
        interface: auto                     # or handler, wsgi, asgi (docs/apps.md)
    endpoints:
      greet:
        route: /greet                       # omit for handles only
        methods: [GET, POST]                # default [GET]
        traffic: {greeter: 1}               # or `backend: greeter`
        shadows: {greeter-v2: 0.1}          # share of requests copied
        request_timeout: 5                  # seconds; 0 = none
        cors: {allow_origins: ["https://app.example"]}   # CORS options (docs/apps.md)
        # A change of `backend` made as a rollout the controller runs
        # (docs/traffic.md, "Rollouts"), not at once:
        rollout: {steps: [0.05, 0.5, 1], step_s: 60, slo: {max_error_rate: 0.01}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from turnout._internal import autoscaling, backend_fields, rollout_rules, validation, web_apps
from turnout._internal.cors import CorsPolicy
from turnout.command import Command
from turnout.config import DEFAULTS, BackendConfig
from turnout.errors import TurnoutError
from turnout.v1 import controller_pb2 as pb

Action = Literal["create", "update", "delete", "unchanged", "kept"]

_TOP_KEYS = frozenset({"backends", "endpoints"})
_BACKEND_KEYS = frozenset(
    {"import_path", "command", "init_args", "config", "replica_options", "interface"}
)
_COMMAND_KEYS = frozenset({"argv", "env", "cwd", "ready_timeout"})
_ENDPOINT_KEYS = frozenset(
    {"route", "methods", "backend", "traffic", "shadows", "request_timeout", "cors", "rollout"}
)
# A rollout block's keys: the keyword arguments of ``Client.rollout``.
_ROLLOUT_KEYS = frozenset(
    {"steps", "step_s", "slo", "shadow_s", "shadow_proportion", "min_match_rate", "delete_old"}
)
_WEIGHT_TOLERANCE = 1e-9


class DeployFileError(TurnoutError):
    """The file cannot be deployed; ``problems`` says where and why, one per line.

    Raised before anything is changed on the instance.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


@dataclass(frozen=True)
class BackendEntry:
    """A backend as a deploy file declares it, or as an instance runs it.

    ``import_path`` is None for a backend whose code was sent pickled (from
    Python) or that runs a ``command``; ``init_args`` is None when its init
    args were pickled. Pickled code cannot be compared with a file, so such a
    backend always counts as changed.
    ``config`` holds the fields a file gives, or every field of a running one;
    ``replica_options`` is what ``CreateBackend`` carries (memory as
    ``memory_bytes``).
    """

    name: str
    import_path: str | None
    init_args: tuple[Any, ...] | None = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    replica_options: pb.ReplicaOptions = field(default_factory=pb.ReplicaOptions)
    # The program a command backend runs (its import_path is None).
    command: Command | None = None
    # What the code is: "auto" (detected), "handler", "wsgi" or "asgi".
    interface: str = "auto"


@dataclass(frozen=True)
class EndpointEntry:
    """An endpoint as a deploy file declares it, or as an instance serves it."""

    name: str
    route: str | None = None
    methods: tuple[str, ...] = ("GET",)
    traffic: Mapping[str, float] = field(default_factory=dict)
    shadows: Mapping[str, float] = field(default_factory=dict)
    request_timeout: float = 0.0
    cors: CorsPolicy | None = None
    # A file's: how a change of its one backend is made (Client.rollout's
    # keyword arguments); None: at once.
    rollout: Mapping[str, Any] | None = None
    # An instance's: the backend a running rollout moves it to.
    rolling_to: str | None = None


@dataclass(frozen=True)
class DeployFile:
    """What should run: backends and endpoints by name, in file order."""

    backends: dict[str, BackendEntry] = field(default_factory=dict)
    endpoints: dict[str, EndpointEntry] = field(default_factory=dict)


# An instance's current state has the same shape as a file.
State = DeployFile


@dataclass(frozen=True)
class BackendChange:
    """What ``apply`` does to one backend.

    ``new_code``: roll out ``desired``'s import path and init args.
    ``config_update``: the config fields to send to UpdateBackendConfig.
    """

    name: str
    action: Action
    desired: BackendEntry | None = None
    new_code: bool = False
    config_update: Mapping[str, Any] = field(default_factory=dict)
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class EndpointChange:
    """What ``apply`` does to one endpoint.

    For ``update``: ``new_shape`` calls UpdateEndpoint (route, methods or
    timeout differ), ``new_traffic`` calls SetTraffic, and ``shadow_updates``
    maps backend -> proportion (0 removes the shadow).
    """

    name: str
    action: Action
    desired: EndpointEntry | None = None
    new_shape: bool = False
    new_traffic: bool = False
    shadow_updates: Mapping[str, float] = field(default_factory=dict)
    details: tuple[str, ...] = ()
    # The new traffic is reached by a rollout (desired.rollout) instead of SetTraffic.
    rollout: bool = False


@dataclass(frozen=True)
class Plan:
    """Every item of the file and of the instance, with what happens to it."""

    backends: tuple[BackendChange, ...]
    endpoints: tuple[EndpointChange, ...]

    @property
    def changes(self) -> tuple[BackendChange | EndpointChange, ...]:
        return (*self.backends, *self.endpoints)

    @property
    def changed(self) -> bool:
        """True when applying would change the instance."""
        return any(c.action not in ("unchanged", "kept") for c in self.changes)

    def counts(self) -> dict[str, int]:
        """How many items each action touches, e.g. ``{"create": 2, "unchanged": 1, ...}``."""
        result = {a: 0 for a in ("create", "update", "delete", "unchanged", "kept")}
        for change in self.changes:
            result[change.action] += 1
        return result


# ---- loading and validating a file ------------------------------------------


def load_file(path: str | Path) -> DeployFile:
    """Read and validate a deploy file, YAML (``.yaml``/``.yml``) or JSON (``.json``).

    Raises ``DeployFileError`` listing every problem, each with its item and
    field, e.g. ``backends.greeter.config.num_replicas: must be >= 1, got 0``.

    Example::

        wanted = load_file("turnout.yaml")
        print(list(wanted.backends), list(wanted.endpoints))
    """
    path = Path(path)
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise DeployFileError(source, ["name the file .yaml, .yml or .json to pick its format"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployFileError(source, [f"cannot read it: {exc}"]) from None
    try:
        document = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except ValueError as exc:
        raise DeployFileError(source, [f"not valid JSON: {exc}"]) from None
    except yaml.YAMLError as exc:
        raise DeployFileError(source, [f"not valid YAML: {_yaml_problem(exc)}"]) from None
    return parse(document, source, base_dir=path.parent.absolute())


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc)


def parse(
    document: Any, source: str = "<deploy file>", *, base_dir: Path | None = None
) -> DeployFile:
    """Validate an already-parsed document (dicts and lists) into a ``DeployFile``.

    A command backend's relative ``cwd`` (or none) is taken from ``base_dir``
    (the deploy file's folder; None: this process's working directory).

    Example::

        parse({"backends": {"b": {"import_path": "m:f"}},
               "endpoints": {"e": {"route": "/e", "backend": "b"}}})
    """
    problems: list[str] = []
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise DeployFileError(source, ["the top level must be a mapping with backends/endpoints"])
    _unknown_keys(document, _TOP_KEYS, "", problems)
    backends: dict[str, BackendEntry] = {}
    for name, body in _section(document, "backends", problems):
        backend = _backend(name, body, problems, base_dir or Path.cwd())
        if backend is not None:
            backends[name] = backend
    endpoints: dict[str, EndpointEntry] = {}
    for name, body in _section(document, "endpoints", problems):
        endpoint = _endpoint(name, body, problems)
        if endpoint is not None:
            endpoints[name] = endpoint
    if problems:
        raise DeployFileError(source, problems)
    return DeployFile(backends=backends, endpoints=endpoints)


def _unknown_keys(body: dict[Any, Any], known: frozenset[str], where: str, out: list[str]) -> None:
    for key in body:
        if key not in known:
            prefix = f"{where}." if where else ""
            out.append(f"{prefix}{key}: unknown field; known: {', '.join(sorted(known))}")


def _section(document: dict[str, Any], key: str, problems: list[str]) -> list[tuple[str, Any]]:
    section = document.get(key)
    if section is None:
        return []
    if not isinstance(section, dict):
        problems.append(f"{key}: must be a mapping of name to settings")
        return []
    items: list[tuple[str, Any]] = []
    for name, body in section.items():
        where = f"{key}.{name}"
        if not isinstance(name, str):
            problems.append(f"{where}: the name must be a string")
            continue
        if not _check(where, problems, validation.name, name, "the name"):
            continue
        if not isinstance(body, dict):
            problems.append(f"{where}: must be a mapping of settings")
            continue
        items.append((name, body))
    return items


def _check(where: str, problems: list[str], validate: Callable[..., object], *args: Any) -> bool:
    """Run one of the controller's own checks; record its message under ``where``."""
    try:
        validate(*args)
    except (ValueError, TypeError) as exc:
        problems.append(f"{where}: {exc}")
        return False
    return True


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _backend(
    name: str, body: dict[str, Any], problems: list[str], base_dir: Path
) -> BackendEntry | None:
    where = f"backends.{name}"
    before = len(problems)
    _unknown_keys(body, _BACKEND_KEYS, where, problems)
    import_path = body.get("import_path")
    command: Command | None = None
    if "command" in body:
        if import_path is not None:
            problems.append(f"{where}: give either import_path or command, not both")
        if "init_args" in body:
            problems.append(f"{where}.init_args: a command takes none (put them in its argv)")
        command = _command(body["command"], f"{where}.command", problems, base_dir)
    elif not isinstance(import_path, str):
        problems.append(
            f"{where}.import_path: required (a string 'package.module:attribute'), or a command"
        )
    else:
        spec = pb.BackendSpec(import_path=import_path)
        _check(f"{where}.import_path", problems, validation.spec, spec)
    init_args = body.get("init_args", [])
    if not isinstance(init_args, list):
        problems.append(f"{where}.init_args: must be a list of arguments")
        init_args = []
    else:
        _check(f"{where}.init_args", problems, json.dumps, init_args)
    config = body.get("config", {})
    if not isinstance(config, dict):
        problems.append(f"{where}.config: must be a mapping of config fields")
        config = {}
    else:
        for key, value in config.items():
            _check(f"{where}.config.{key}", problems, BackendConfig.coerce, {key: value})
        if len(problems) == before and ("autoscaling" in config or "autoscaling_config" in config):
            # Checks between fields (num_replicas beside autoscaling).
            _check(f"{where}.config", problems, BackendConfig.coerce, config)
    options = _replica_options(
        body.get("replica_options", {}), f"{where}.replica_options", problems
    )
    interface = body.get("interface", "auto")
    try:
        web_apps.to_proto(interface)
    except (TypeError, ValueError) as exc:
        problems.append(f"{where}.interface: {exc}")
    if command is not None and interface != "auto":
        problems.append(f"{where}.interface: a command serves the replica protocol itself")
    if len(problems) > before or options is None:
        return None
    return BackendEntry(
        name=name,
        import_path=None if command is not None else str(import_path),
        init_args=tuple(init_args),
        config=dict(config),
        replica_options=options,
        command=command,
        interface=interface,
    )


def _command(body: Any, where: str, problems: list[str], base_dir: Path) -> Command | None:
    """A command: its argv as a list, or a mapping of argv, env, cwd, ready_timeout."""
    if isinstance(body, list):
        body = {"argv": body}
    if not isinstance(body, dict):
        problems.append(f"{where}: must be a list (its argv) or a mapping with argv, env, cwd")
        return None
    before = len(problems)
    _unknown_keys(body, _COMMAND_KEYS, where, problems)
    argv = body.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        problems.append(f"{where}.argv: required, a list of strings such as [node, replica.js]")
    env = body.get("env", {})
    if not validation.is_str_map(env):
        problems.append(f"{where}.env: must map names to strings (quote numbers)")
    cwd = body.get("cwd", ".")
    if not isinstance(cwd, str):
        problems.append(f"{where}.cwd: must be a path, relative to the deploy file's folder")
    timeout = body.get("ready_timeout")
    if timeout is not None and not _is_number(timeout):
        problems.append(f"{where}.ready_timeout: must be a number of seconds")
    if len(problems) > before:
        return None
    command = Command(list(argv or ()), env=env, cwd=base_dir / cwd, ready_timeout=timeout)
    if not _check(where, problems, validation.command, command.to_proto()):
        return None
    return command


def _replica_options(body: Any, where: str, problems: list[str]) -> pb.ReplicaOptions | None:
    if not isinstance(body, dict):
        keys = ", ".join(validation.REPLICA_OPTION_KEYS)
        problems.append(f"{where}: must be a mapping with {keys}")
        return None
    # The Python API's check, each problem recorded under its option.
    message, found = validation.replica_option_problems(body)
    for problem in found:
        problems.append(
            f"{where}.{problem.key}: {problem.message}"
            if problem.key
            else f"{where}: {problem.message}"
        )
    return message


def _endpoint(name: str, body: dict[str, Any], problems: list[str]) -> EndpointEntry | None:
    where = f"endpoints.{name}"
    before = len(problems)
    _unknown_keys(body, _ENDPOINT_KEYS, where, problems)
    route = body.get("route")
    if route is not None:
        if not isinstance(route, str):
            problems.append(f"{where}.route: must be a string such as /{name}")
        else:
            _check(f"{where}.route", problems, validation.route, route)
    methods = body.get("methods", ["GET"])
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        problems.append(f"{where}.methods: must be a list such as [GET, POST]")
        methods = ["GET"]
    else:
        _check(f"{where}.methods", problems, validation.methods, methods)
    if "backend" in body and "traffic" in body:
        problems.append(f"{where}: give either backend or traffic, not both")
    traffic: dict[str, float] = {}
    if "backend" in body:
        if not isinstance(body["backend"], str):
            problems.append(f"{where}.backend: must be a backend name")
        else:
            traffic = {body["backend"]: 1.0}
    elif "traffic" in body:
        traffic = _shares(body["traffic"], f"{where}.traffic", problems)
        _check(f"{where}.traffic", problems, validation.traffic, traffic)
    else:
        problems.append(f"{where}: needs backend (one backend) or traffic ({{backend: weight}})")
    shadows = _shares(body.get("shadows", {}), f"{where}.shadows", problems)
    for backend, proportion in shadows.items():
        if not 0 < proportion <= 1:
            problems.append(f"{where}.shadows.{backend}: must be > 0 and <= 1, got {proportion}")
    timeout = body.get("request_timeout", 0)
    if not _is_number(timeout):
        problems.append(f"{where}.request_timeout: must be a number of seconds")
    else:
        _check(where, problems, validation.request_timeout, float(timeout))
    cors = None
    if "cors" in body:
        try:
            cors = CorsPolicy.from_dict(body["cors"])
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}.cors: {exc}")
    rollout = _rollout(body.get("rollout"), traffic, f"{where}.rollout", problems)
    if len(problems) > before:
        return None
    return EndpointEntry(
        name=name,
        route=route or None,
        methods=tuple(validation.methods(methods)),
        traffic=traffic,
        shadows=shadows,
        request_timeout=float(timeout),
        cors=cors,
        rollout=rollout,
    )


def _rollout(
    body: Any, traffic: Mapping[str, float], where: str, problems: list[str]
) -> dict[str, Any] | None:
    """A rollout block, checked as the controller will check it."""
    if body is None:
        return None
    if not isinstance(body, dict):
        problems.append(f"{where}: must be a mapping such as {{steps: [0.1, 1], step_s: 60}}")
        return None
    _unknown_keys(body, _ROLLOUT_KEYS, where, problems)
    if len(traffic) != 1:
        problems.append(f"{where}: needs `backend:` (the one backend the rollout ends on)")
    steps = body.get("steps", list(rollout_rules.DEFAULT_STEPS))
    if not isinstance(steps, list):
        problems.append(f"{where}.steps: must be a list such as [0.05, 0.5, 1]")
    else:
        _check(f"{where}.steps", problems, rollout_rules.check_steps, steps)
    _check(f"{where}.step_s", problems, rollout_rules.check_step_s, body.get("step_s", 60.0))
    if not isinstance(body.get("slo", {}), dict):
        problems.append(f"{where}.slo: must map bounds to numbers")
    else:
        _check(f"{where}.slo", problems, rollout_rules.slo_from_dict, body.get("slo"))
    for key in ("shadow_s", "shadow_proportion", "min_match_rate"):
        if key in body and not _is_number(body[key]):
            problems.append(f"{where}.{key}: must be a number")
    if "delete_old" in body and not isinstance(body["delete_old"], bool):
        problems.append(f"{where}.delete_old: must be true or false")
    return dict(body)


def _shares(body: Any, where: str, problems: list[str]) -> dict[str, float]:
    if not isinstance(body, dict):
        problems.append(f"{where}: must map backend names to numbers")
        return {}
    shares: dict[str, float] = {}
    for backend, value in body.items():
        if not isinstance(backend, str) or not _is_number(value) or not math.isfinite(value):
            problems.append(f"{where}.{backend}: must be a number")
            continue
        shares[backend] = float(value)
    return shares


# ---- planning -----------------------------------------------------------------


def plan(wanted: DeployFile, current: State, *, prune: bool = False) -> Plan:
    """The changes that make ``current`` match ``wanted``.

    Items only in ``current`` are deleted with ``prune``, otherwise kept.
    Raises ``DeployFileError`` when the file cannot be applied to this
    instance (a backend that neither the file nor the instance has, replica
    options that cannot change in place); nothing has changed then.

    Example::

        steps = plan(load_file("turnout.yaml"), current_state, prune=True)
        if not steps.changed:
            print("nothing to do")
    """
    problems = _reference_problems(wanted, current, prune)
    backends: list[BackendChange] = []
    for name, backend in wanted.backends.items():
        running = current.backends.get(name)
        if running is None:
            backends.append(BackendChange(name, "create", desired=backend))
        else:
            backends.append(_backend_change(backend, running, problems))
    if problems:
        raise DeployFileError("cannot apply", problems)
    for name in current.backends:
        if name not in wanted.backends:
            backends.append(BackendChange(name, "delete" if prune else "kept"))
    endpoints: list[EndpointChange] = []
    for name, endpoint in wanted.endpoints.items():
        serving = current.endpoints.get(name)
        if serving is None:
            endpoints.append(EndpointChange(name, "create", desired=endpoint))
        else:
            endpoints.append(_endpoint_change(endpoint, serving))
    for name in current.endpoints:
        if name not in wanted.endpoints:
            endpoints.append(EndpointChange(name, "delete" if prune else "kept"))
    return Plan(backends=tuple(backends), endpoints=tuple(endpoints))


def _reference_problems(wanted: DeployFile, current: State, prune: bool) -> list[str]:
    available = set(wanted.backends) | (set() if prune else set(current.backends))
    problems = []
    for endpoint in wanted.endpoints.values():
        for field_name, shares in (("traffic", endpoint.traffic), ("shadows", endpoint.shadows)):
            for backend in shares:
                if backend not in available:
                    where = "in the file" if prune else "in the file or on the instance"
                    problems.append(
                        f"endpoints.{endpoint.name}.{field_name}.{backend}: "
                        f"no backend of that name {where}"
                    )
    return problems


def _effective(config: Mapping[str, Any]) -> dict[str, Any]:
    """A file's config with every field it leaves out at its default (an
    autoscaled backend's num_replicas is the controller's, so not compared)."""
    given = dict(config)
    if "autoscaling_config" in given:
        given["autoscaling"] = given.pop("autoscaling_config")
    effective = {**DEFAULTS.to_dict(), **given}
    if effective.get("autoscaling") is not None:
        effective["num_replicas"] = None
        effective["autoscaling"] = autoscaling.to_dict(
            autoscaling.from_dict(effective["autoscaling"])
        )
    return effective


def _backend_change(
    wanted: BackendEntry, running: BackendEntry, problems: list[str]
) -> BackendChange:
    details: list[str] = []
    if wanted.import_path != running.import_path or wanted.command != running.command:
        details.append(f"code: {_code(running)} -> {_code(wanted)}")
    wanted_args = list(wanted.init_args or ())
    if running.init_args is None or wanted_args != list(running.init_args):
        before = "(pickled)" if running.init_args is None else json.dumps(list(running.init_args))
        details.append(f"init_args: {before} -> {json.dumps(wanted_args)}")
    if wanted.interface != running.interface:
        details.append(f"interface: {running.interface} -> {wanted.interface}")
    new_code = bool(details)
    update: dict[str, Any] = {}
    for key, value in _effective(wanted.config).items():
        # A field without a default (user_config, http_call_methods) left out
        # of the file is left as it is: the controller has no way to clear one.
        if backend_fields.FIELD[key].default is None and value is None:
            continue
        if not _same(value, running.config.get(key)):
            update[key] = value
            details.append(f"{key}: {_show(running.config.get(key))} -> {_show(value)}")
    if wanted.replica_options != running.replica_options:
        problems.append(
            f"backends.{wanted.name}.replica_options: cannot change on a running backend "
            f"({validation.replica_options_dict(running.replica_options)} -> "
            f"{validation.replica_options_dict(wanted.replica_options)}); "
            "deploy it under a new name and move the traffic, or delete it first"
        )
    action: Action = "update" if details else "unchanged"
    return BackendChange(
        wanted.name,
        action,
        desired=wanted,
        new_code=new_code,
        config_update=update,
        details=tuple(details),
    )


def _code(backend: BackendEntry) -> str:
    if backend.command is not None:
        return "command " + json.dumps(list(backend.command.argv))
    return backend.import_path or "(pickled)"


def _endpoint_change(wanted: EndpointEntry, serving: EndpointEntry) -> EndpointChange:
    details: list[str] = []
    if wanted.route != serving.route:
        details.append(f"route: {serving.route or '(none)'} -> {wanted.route or '(none)'}")
    if sorted(wanted.methods) != sorted(serving.methods):
        details.append(f"methods: {','.join(serving.methods)} -> {','.join(wanted.methods)}")
    if not math.isclose(wanted.request_timeout, serving.request_timeout, abs_tol=1e-9):
        old, new = _show(serving.request_timeout), _show(wanted.request_timeout)
        details.append(f"request_timeout: {old} -> {new}")
    if wanted.cors != serving.cors:
        old, new = (json.dumps(c.to_dict() if c else None) for c in (serving.cors, wanted.cors))
        details.append(f"cors: {old} -> {new}")
    new_shape = bool(details)
    new_traffic = not _same_shares(wanted.traffic, serving.traffic)
    rollout = False
    if new_traffic and wanted.rollout is not None:
        if serving.rolling_to is not None and serving.rolling_to in wanted.traffic:
            # The rollout the file asked for runs: the traffic is on its way.
            new_traffic = False
        elif len(serving.traffic) == 1:
            rollout = True
    if new_traffic:
        old, new = _shares_text(serving.traffic), _shares_text(wanted.traffic)
        how = "rollout" if rollout else "traffic"
        details.append(f"{how}: {old} -> {new}")
    shadow_updates: dict[str, float] = {}
    for backend in sorted(set(wanted.shadows) | set(serving.shadows)):
        if backend == serving.rolling_to:
            continue  # a rollout's shadow phase is the rollout's
        new_share, old_share = wanted.shadows.get(backend, 0.0), serving.shadows.get(backend, 0.0)
        if abs(new_share - old_share) > _WEIGHT_TOLERANCE:
            shadow_updates[backend] = new_share
            details.append(f"shadow {backend}: {_show(old_share)} -> {_show(new_share)}")
    action: Action = "update" if details else "unchanged"
    return EndpointChange(
        wanted.name,
        action,
        desired=wanted,
        new_shape=new_shape,
        new_traffic=new_traffic,
        shadow_updates=shadow_updates,
        details=tuple(details),
        rollout=rollout,
    )


def _same(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return bool(json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True))


def _same_shares(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    keys = {k for k, v in a.items() if v} | {k for k, v in b.items() if v}
    return all(abs(a.get(k, 0.0) - b.get(k, 0.0)) <= _WEIGHT_TOLERANCE for k in keys)


def _shares_text(shares: Mapping[str, float]) -> str:
    if not shares:
        return "(none)"
    return ", ".join(f"{backend} {_show(share)}" for backend, share in sorted(shares.items()))


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None or isinstance(value, int | float):
        return str(value)
    return json.dumps(value)
