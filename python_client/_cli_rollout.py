"""``turnout rollout start|status|pause|resume|abort``: rollouts from the shell.

::

    turnout rollout start model model-v2 --steps 0.05,0.5,1 --step-s 60 \\
        --slo max_error_rate=0.01 --slo max_latency_ratio=2 [--wait]
    turnout rollout status [model] [--json]
    turnout rollout pause|resume|abort model
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from turnout import _cli_render
from turnout._internal import rollout_rules
from turnout.client import Client
from turnout.errors import InvalidArgumentError

Connect = Callable[[argparse.Namespace], Client]


def _steps(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"steps are numbers separated by commas, e.g. 0.05,0.5,1 (got {text!r})"
        ) from None


def _slo_item(text: str) -> tuple[str, float | int]:
    key, sep, value = text.partition("=")
    if not sep or key not in rollout_rules.SLO_KEYS:
        raise argparse.ArgumentTypeError(
            f"--slo takes KEY=VALUE with KEY one of {', '.join(rollout_rules.SLO_KEYS)} "
            f"(got {text!r})"
        )
    try:
        return key, int(value) if key == "min_requests" else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--slo {key} needs a number (got {value!r})") from None


def _print(info: dict[str, Any]) -> None:
    print(_cli_render.rollout_table({info["endpoint"]: info}))


def add_parser(commands: Any, parents: list[argparse.ArgumentParser], connect: Connect) -> None:
    """Add ``rollout`` and its subcommands to the ``turnout`` parser."""
    rollout = commands.add_parser(
        "rollout",
        help="move an endpoint to another backend in watched steps",
        description="Rollouts run by the controller: traffic moves to the new backend step "
        "by step, each step judged against the SLO, all of it moved back at once on a breach. "
        "See docs/traffic.md, 'Rollouts'.",
    )
    actions = rollout.add_subparsers(dest="action", metavar="ACTION", required=True)

    start = actions.add_parser("start", parents=parents, help="start a rollout")
    start.add_argument("endpoint")
    start.add_argument("to_backend", metavar="TO_BACKEND")
    start.add_argument(
        "--steps",
        type=_steps,
        default=list(rollout_rules.DEFAULT_STEPS),
        help="shares of traffic, increasing, the last 1 (default: 0.05,0.25,0.5,1)",
    )
    start.add_argument(
        "--step-s", type=float, default=rollout_rules.DEFAULT_STEP_S, help="seconds per step"
    )
    start.add_argument(
        "--slo",
        type=_slo_item,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a bound, repeatable: max_error_rate, max_p95_s, max_p99_s, max_error_rate_ratio, "
        "max_latency_ratio, min_requests (default: max_error_rate=0.01)",
    )
    start.add_argument("--shadow-s", type=float, help="a shadow phase of this many seconds first")
    start.add_argument("--shadow-proportion", type=float, default=1.0)
    start.add_argument("--min-match-rate", type=float, default=1.0)
    start.add_argument(
        "--delete-old", action="store_true", help="delete the old backend once it succeeded"
    )
    start.add_argument(
        "--wait", action="store_true", help="wait until it ended; exit 1 unless it succeeded"
    )
    start.set_defaults(func=lambda args: _start(args, connect(args)))

    status = actions.add_parser("status", parents=parents, help="show rollouts")
    status.add_argument("endpoint", nargs="?", help="only this endpoint's")
    status.add_argument("--json", action="store_true", help="print JSON instead")
    status.set_defaults(func=lambda args: _status(args, connect(args)))

    for verb, what in (
        ("pause", "hold a rollout at its step"),
        ("resume", "go on with a paused rollout"),
        ("abort", "end a rollout, all traffic back on the old backend"),
    ):
        action = actions.add_parser(verb, parents=parents, help=what)
        action.add_argument("endpoint")
        action.set_defaults(func=lambda args: _act(args, connect(args)))


def _start(args: argparse.Namespace, client: Client) -> int:
    rollout = client.rollout(
        args.endpoint,
        args.to_backend,
        steps=args.steps,
        step_s=args.step_s,
        slo=dict(args.slo) or None,
        shadow_s=args.shadow_s,
        shadow_proportion=args.shadow_proportion,
        min_match_rate=args.min_match_rate,
        delete_old=args.delete_old,
    )
    if not args.wait:
        _print(rollout.info())
        return 0
    state = rollout.wait()
    _print(rollout.info())
    return 0 if state == "succeeded" else 1


def _status(args: argparse.Namespace, client: Client) -> int:
    if args.endpoint:
        rollouts = {args.endpoint: client.get_rollout(args.endpoint).info()}
    else:
        rollouts = client.list_rollouts()
    if args.json:
        print(json.dumps(rollouts, indent=2, sort_keys=True))
    elif rollouts:
        print(_cli_render.rollout_table(rollouts))
    else:
        print("No rollouts.")
    return 0


def _act(args: argparse.Namespace, client: Client) -> int:
    rollout = client.get_rollout(args.endpoint)
    verb = {"pause": rollout.pause, "resume": rollout.resume, "abort": rollout.abort}
    if args.action not in verb:
        raise InvalidArgumentError(f"unknown rollout action {args.action!r}")
    verb[args.action]()
    _print(rollout.info())
    return 0
