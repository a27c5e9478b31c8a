"""Which machine and which code a benchmark measured: every result file records it, so later
runs can be compared with earlier ones on the same kind of machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["machine_info", "write_result"]


def _git(*args: str) -> str:
    """Read-only git query (which code was measured); empty when git is unavailable."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPU model and count, Python, platform, the pilotfish commit and whether the tree was
    dirty; plus what the benchmark adds (`extra`: library versions, limits)."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if "model name" in ln), "")
    return {
        "pilotfish_commit": _git("rev-parse", "HEAD"),
        # Results written by earlier benchmarks of the same run are not the code measured.
        "pilotfish_tree_dirty": bool(
            _git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":!/bench/results")
        ),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        **extra,
    }


def write_result(path: Path, document: dict[str, Any]) -> None:
    """A benchmark's JSON result, its directory made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
