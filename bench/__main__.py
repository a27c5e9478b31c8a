"""The whole benchmark suite in one command: ADS push, translation, real Envoys.

    .venv/bin/python -m bench [--quick] [--only ads_push translate envoys] [--results DIR] [--plots]

Each benchmark runs with its own defaults (a few minutes in all on a 2-core machine) and writes
its own JSON; then a combined summary is printed and written to `summary.json`. `--quick` is a
smoke run of each (seconds), written to `bench/results/quick/` unless `--results` says otherwise,
so it never overwrites real results. A benchmark that fails is reported and the others still run.
`--plots` also writes PNGs of each JSON next to it (`bench/plot.py`; needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import ads_push, envoys, machine, translate
from bench.plot import plot, require_matplotlib

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARKS: dict[str, Callable[[Sequence[str] | None], int]] = {
    "ads_push": ads_push.main,
    "translate": translate.main,
    "envoys": envoys.main,
}
# Arguments besides --json; None: the benchmark's own defaults.
QUICK: dict[str, list[str]] = {
    "ads_push": ["--clients", "5", "20", "--clusters", "3", "--repeat", "1", "--timeout", "30",
                 "--protocol", "sotw", "delta"],
    "translate": ["--proxies", "12", "--services", "20", "200", "--repeat", "1"],
    "envoys": ["--envoys", "2", "--repeat", "2", "--timeout", "30"],
}  # fmt: skip
ADS_PUSH_KEYS = ("clients", "transport", "protocol", "clusters", "endpoints", "push_median_s",
                 "server_cpu_ms_per_client_push", "bytes_per_client_push",
                 "initial_s")  # fmt: skip


def _ads_push(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "rows": [
            {key: row.get(key) for key in ADS_PUSH_KEYS}
            | {"resources_serialized": [p.get("resources_serialized") for p in row["pushes"]]}
            for row in document.get("results", [])
        ]
    }


def _translate(document: dict[str, Any]) -> dict[str, Any]:
    synthetic = document.get("synthetic", {})
    return {
        "bookinfo": [
            {k: row[k] for k in ("proxies", "shapes", "full_s", "edit_s")}
            for row in document.get("rows", [])
        ],
        "goals": synthetic.get("goals"),
        "synthetic": [
            {
                "services": row["services"],
                "shapes": row["shapes"],
                "load_s": row["load_s"],
                "full_s": row["full_s"],
                "peak_mb": row["memory_mb"]["peak"],
                "route_change_s": row["route_change"]["total_s"],
                "route_change_serialized": row["route_change"]["resources_serialized"],
                "endpoint_change_s": row["endpoint_change"]["total_s"],
                "endpoint_change_serialized": row["endpoint_change"]["resources_serialized"],
                "goals_met": row["goals_met"],
            }
            for row in synthetic.get("rows", [])
        ],
    }


def _envoys(document: dict[str, Any]) -> dict[str, Any]:
    result = document["result"]
    median: dict[str, Any] = result["median"]
    return {"envoys": document["args"]["envoys"], "flips": len(result["flips"])} | median


SUMMARIES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "ads_push": _ads_push,
    "translate": _translate,
    "envoys": _envoys,
}


def _print_summary(summary: dict[str, Any]) -> None:
    print("\n== summary ==")
    for name, entry in summary["benchmarks"].items():
        status = "ok" if entry["ok"] else f"FAILED ({entry.get('error', '').splitlines()[-1:]})"
        print(f"{name}: {status}, {entry['elapsed_s']:.0f} s, {entry['json']}")
        headline = entry.get("headline")
        if not headline:
            continue
        if name == "ads_push":
            for row in headline["rows"]:
                print(f"  N={row['clients']} {row['transport']} {row['protocol']}: push "
                      f"{row['push_median_s']:.3f} s, "
                      f"{row['server_cpu_ms_per_client_push']:.2f} ms server CPU and "
                      f"{row['bytes_per_client_push']:.0f} bytes per proxy, "
                      f"serialized/push {row['resources_serialized']}")  # fmt: skip
        elif name == "translate":
            for row in headline["bookinfo"]:
                full, edit = row["full_s"] * 1000, row["edit_s"] * 1000
                print(f"  bookinfo {row['proxies']} proxies/{row['shapes']} shapes: full "
                      f"{full:.0f} ms, edit {edit:.0f} ms")  # fmt: skip
            for row in headline["synthetic"]:
                goals = row["goals_met"]
                print(f"  {row['services']} services: full {row['full_s']:.2f} s (goal "
                      f"{'-' if goals['full_translation'] is None else goals['full_translation']}),"
                      f" VS change {row['route_change_s'] * 1000:.1f} ms, endpoint change "
                      f"{row['endpoint_change_s'] * 1000:.1f} ms (20 ms goal "
                      f"{goals['one_change']}), peak {row['peak_mb']:.0f} MB")  # fmt: skip
        elif name == "envoys":
            ms = {k: "-" if v is None else f"{v:.0f}" for k, v in headline.items()
                  if k.endswith("_ms")}  # fmt: skip
            print(f"  {headline['envoys']} Envoys, median of {headline['flips']} flips: first "
                  f"{ms['first_ms']} ms, p50 {ms['p50_ms']} ms, last {ms['last_ms']} ms, "
                  f"server CPU {ms['server_cpu_ms']} ms; all converged: "
                  f"{headline['all_converged']}")  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of each (seconds)")
    parser.add_argument(
        "--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS), metavar="NAME"
    )
    parser.add_argument(
        "--results", type=Path, help="directory for the JSON files (default bench/results)"
    )
    parser.add_argument(
        "--plots", action="store_true", help="also PNG plots of each JSON (needs matplotlib)"
    )
    args = parser.parse_args(argv)
    if args.results is None:
        args.results = RESULTS / "quick" if args.quick else RESULTS
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks in turn, then print and write the summary."""
    args = parse_args(argv)
    if args.plots:
        require_matplotlib()  # before minutes of benchmarks, not after
    args.results.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "benchmark": "suite",
        "quick": args.quick,
        "machine": translate.machine_info(),
        "benchmarks": {},
    }
    for name in args.only:
        out = args.results / f"{name}.json"
        argv_one = [*(QUICK[name] if args.quick else []), "--json", str(out)]
        print(f"\n== {name} {' '.join(argv_one)} ==", flush=True)
        entry: dict[str, Any] = {"json": str(out), "argv": argv_one}
        started = time.monotonic()
        try:
            code = BENCHMARKS[name](argv_one)
            entry["ok"] = code == 0
            entry["headline"] = SUMMARIES[name](json.loads(out.read_text(encoding="utf-8")))
        except Exception:  # one broken benchmark must not hide the others' results
            entry["ok"] = False
            entry["error"] = traceback.format_exc()
            print(entry["error"], file=sys.stderr)
        except SystemExit as exit_:  # argparse
            entry["ok"], entry["error"] = False, f"exit {exit_.code}"
        entry["elapsed_s"] = time.monotonic() - started
        summary["benchmarks"][name] = entry
        if args.plots and entry["ok"]:  # a failed run's JSON may be an older one
            entry["plots"] = [str(png) for png in plot(out, args.results)]
            print(f"plots: {' '.join(entry['plots'])}")
    path = args.results / "summary.json"
    machine.write_result(path, summary)
    _print_summary(summary)
    print(f"wrote {path}")
    return 0 if all(e["ok"] for e in summary["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
