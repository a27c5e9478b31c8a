"""The `pilotfish` subcommands, one module each: `register(commands)` adds its parser and sets
`func(args) -> int` (the exit status). User mistakes raise `CommandError` (no traceback)."""

from __future__ import annotations

import argparse

from pilotfish.errors import PilotfishError

__all__ = ["CommandError", "address", "host_port"]


class CommandError(PilotfishError):
    """A user mistake (bad flag, missing directory, port taken): printed, exit status 2."""


def address(text: str) -> tuple[str, int]:
    """argparse type for HOST:PORT."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def host_port(value: tuple[str, int]) -> str:
    """(host, port) as HOST:PORT, IPv6 hosts in brackets (what `address` reads back)."""
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
