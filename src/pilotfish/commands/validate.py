"""`pilotfish validate`: check manifest files the way istiod would, without serving them.

Like `istioctl validate`: every problem is one line on stdout
(`file[index] Kind ns/name: field.path: reason`), documents of kinds pilotfish does not
understand are notes on stderr, and the exit status is 1 when any object is invalid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pilotfish.commands import CommandError
from pilotfish.sources import LoadResult, load_path
from pilotfish.sources.manifests import SUFFIXES

__all__ = ["load_all", "one_line", "register", "run"]


def register(commands: Any) -> None:
    """Add the `validate` subcommand."""
    parser = commands.add_parser(
        "validate",
        help="check Istio and Kubernetes manifests without serving them",
        description=(
            "Load every manifest (YAML or JSON, many documents per file; directories are read "
            "recursively) and check it with istiod's validation rules. Each problem is printed "
            "on stdout as 'file[index] Kind namespace/name: field.path: reason'; documents of "
            "kinds pilotfish does not use are noted on stderr. Exit status: 0 when every "
            "object is valid, 1 when any is not, 2 on a usage error (such as a missing path)."
        ),
    )
    parser.add_argument(
        "paths", nargs="+", metavar="FILE_OR_DIR", help="manifest files or directories"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print only problems (no notes, no summary)"
    )
    parser.set_defaults(func=run)


def load_all(paths: list[str]) -> tuple[LoadResult, int]:
    """Load every path (file or directory); returns the combined result and the file count.

    A path that does not exist is a `CommandError`."""
    result = LoadResult()
    files = 0
    for text in paths:
        path = Path(text)
        if not path.exists():
            raise CommandError(f"{text}: no such file or directory")
        if path.is_dir():
            files += sum(1 for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        else:
            files += 1
        result.extend(load_path(path))
    return result, files


def one_line(text: str) -> str:
    """A problem on one line: YAML parser messages span several (with a `^` marker line)."""
    lines = (line.strip() for line in text.splitlines())
    return " ".join(line for line in lines if line and line != "^")


def run(args: argparse.Namespace) -> int:
    """Validate; exit status 1 when any object is invalid."""
    result, files = load_all(args.paths)
    for error in result.errors:
        print(one_line(str(error)))
    if not args.quiet:
        for skipped in result.skipped:
            print(f"note: skipped {skipped}", file=sys.stderr)
        # One object can have several problems; a file that is not YAML counts as one.
        invalid = len({(e.file, e.index) if e.index is not None else id(e) for e in result.errors})
        print(
            f"{len(result.objects)} objects valid, {invalid} invalid in {files} "
            f"file{'' if files == 1 else 's'}"
            + (f" ({len(result.skipped)} skipped)" if result.skipped else ""),
            file=sys.stderr,
        )
    return 1 if result.errors else 0
