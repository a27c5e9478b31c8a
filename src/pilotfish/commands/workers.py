"""`pilotfish serve --workers K`: K server processes on one xDS port, one per core.

A Python process serves with one core; a machine has more. Each worker is a whole `serve` (its
own cache, controller and config watcher, fed from the same directory or store), and the kernel
spreads new proxy connections over the workers' listening sockets (SO_REUSEPORT, which grpc
sets). Workers share nothing: they translate the same config into the same versions, as
replicas do. The supervisor reserves the port, passes every setting to the workers through
`PILOTFISH_*` variables, forwards SIGTERM/SIGINT, and stops them all if one dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pilotfish.commands import CommandError, host_port

__all__ = ["supervise", "worker_environment"]

log = logging.getLogger("pilotfish.serve")


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return host_port(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def worker_environment(settings: Any, index: int, xds_port: int) -> dict[str, str]:
    """The environment of worker `index`: every setting as `PILOTFISH_<NAME>`, the reserved xDS
    port, and an admin port of its own (the given one plus `index`, or any free one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOTFISH_")}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if value is None or value == "":
            continue
        env[f"PILOTFISH_{field.name.upper()}"] = _text(value)
    host, _ = settings.xds_address
    admin_host, admin_port = settings.admin_address
    env["PILOTFISH_XDS_ADDRESS"] = host_port((host, xds_port))
    env["PILOTFISH_ADMIN_ADDRESS"] = host_port(
        (admin_host, admin_port + index if admin_port else 0)
    )
    env["PILOTFISH_WORKERS"] = "1"
    return env


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT: the port is ours, and the workers can join it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def supervise(settings: Any, workers: int) -> int:
    """Run `workers` serve processes on one port until a signal; returns the exit status."""

    host, port = settings.xds_address
    try:
        reserved = _reserve(host, port)
    except OSError as error:
        raise CommandError(
            f"cannot serve xDS on {host_port(settings.xds_address)}: {error}"
        ) from error
    xds_port = reserved.getsockname()[1]
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:  # a second signal: now
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            os._exit(1)
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for index in range(workers):
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "pilotfish", "serve"],
                    env=worker_environment(settings, index, xds_port),
                    cwd=Path.cwd(),
                    # Terminal signals (Ctrl-C) reach only us; we forward them once.
                    start_new_session=True,
                )
            )
        log.info("serving xDS on %s:%d with %d workers", host, xds_port, workers)
        while children:
            for child in list(children):
                code = child.poll()
                if code is None:
                    continue
                children.remove(child)
                if not stopping:
                    log.error("worker %d exited with %d: stopping the others", child.pid, code)
                    status = 1
                    stop(signal.SIGTERM, None)
            time.sleep(0.05)
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait()
        reserved.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("stopped %d workers", workers)
    return status
