"""How long the controller takes to translate a mesh for many connected proxies.

Bookinfo's manifests (services, subsets, gateway, routes) for N sidecars spread over the six
bookinfo workload shapes, and the same N sidecars each of a shape of its own (the worst case:
every proxy translated separately). Also one edit of the reviews route, and a save that changes
nothing. Prints a table and writes JSON.

    .venv/bin/python bench/translate.py --proxies 100 1000 [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pilotfish.cache import SnapshotCache
from pilotfish.controller import Controller
from pilotfish.demo.bookinfo import CONFIG
from pilotfish.protos import DiscoveryRequest, Node
from pilotfish.sources import ConfigStore

__all__ = ["main", "run"]

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "translate.json"
WORKLOADS = [("productpage", "v1"), ("details", "v1"), ("ratings", "v1"),
             ("reviews", "v1"), ("reviews", "v2"), ("reviews", "v3")]  # fmt: skip
ROUTES = {name: (CONFIG / "routes" / f"{name}.yaml").read_text() for name in ("all-v1", "jason-v2")}


def _controller(proxies: int, distinct: bool) -> tuple[Controller, ConfigStore]:
    store = ConfigStore()
    for name in ("services.yaml", "gateway.yaml", "destination-rules.yaml"):
        store.update(str(CONFIG / name), (CONFIG / name).read_text())
    store.update("routes.yaml", ROUTES["all-v1"])
    controller = Controller(SnapshotCache(), store)
    controller.flush()
    for n in range(proxies):
        app, version = WORKLOADS[n % len(WORKLOADS)]
        node = Node(id=f"{app}-{version}-{n}")
        node.metadata.update({"NAMESPACE": "default", "LABELS": {"app": app, "version": version}})
        if distinct:
            node.metadata.update({"WORKLOAD": f"{app}-{version}-{n}"})
        controller.on_stream_request(n + 1, DiscoveryRequest(node=node))
    return controller, store


def _timed(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run_one(proxies: int, distinct: bool, repeat: int) -> dict[str, Any]:
    full, edit, noop = [], [], []
    for _ in range(repeat):
        controller, store = _controller(proxies, distinct)
        full.append(_timed(lambda c=controller: c.flush(force=True)))
        store.update("routes.yaml", ROUTES["jason-v2"])
        edit.append(_timed(controller.flush))
        store.update("routes.yaml", ROUTES["jason-v2"])  # saved again, unchanged
        noop.append(_timed(controller.flush))
        store.update("routes.yaml", ROUTES["all-v1"])
        translated = controller.stats.proxies_translated
    return {
        "proxies": proxies,
        "shapes": proxies if distinct else min(proxies, len(WORKLOADS)),
        "full_s": statistics.median(full),
        "edit_s": statistics.median(edit),
        "unchanged_s": statistics.median(noop),
        "translations_last_run": translated,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = [run_one(n, distinct, args.repeat) for n in args.proxies for distinct in (False, True)]
    print(
        f"{'proxies':>8} {'shapes':>7} {'full':>9} {'edit':>9} {'unchanged':>10} {'per proxy':>10}"
    )
    for row in rows:
        print(f"{row['proxies']:>8} {row['shapes']:>7} {row['full_s'] * 1000:>7.1f}ms "
              f"{row['edit_s'] * 1000:>7.1f}ms {row['unchanged_s'] * 1000:>8.2f}ms "
              f"{row['edit_s'] / row['proxies'] * 1e6:>8.0f}us")  # fmt: skip
    document = {
        "benchmark": "translate",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "repeat": args.repeat,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return document


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--proxies", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = parser.parse_args(argv)
    run(args)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
