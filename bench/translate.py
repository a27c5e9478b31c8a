"""How long the controller takes to translate a mesh, for many proxies and for many services.

Bookinfo (the `pilotfish demo` manifests) for N sidecars spread over the six bookinfo workload
shapes, and the same N sidecars each of a shape of its own (the worst case: every proxy
translated separately). Also one edit of the reviews route, and a save that changes nothing.

A synthetic mesh (`pilotfish.testing.synthetic`) of S services, E endpoints each, for one sidecar
(or K sidecar shapes): loading the manifests, a full translation and its memory, then one
VirtualService changed and one endpoint added, each with the work it caused (units translated,
resources serialized). The issue "performance at scale" sets the goals: 10,000 services fully
translated in 2 s, one change pushed in 20 ms with work proportional to the change.

    .venv/bin/python bench/translate.py [--proxies 100 1000] [--services 1000 10000]

Each section runs when its flag is given, both when neither is.
"""

from __future__ import annotations

import argparse
import functools
import gc
import multiprocessing
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.controller import Controller
from pilotfish.demo.bookinfo import CONFIG
from pilotfish.gcpause import gc_paused
from pilotfish.protos import RESOURCE_TYPES, DiscoveryRequest, Node
from pilotfish.sources import ConfigStore
from pilotfish.testing.synthetic import service_documents

if not __package__:  # run as a script (bench/ is sys.path[0]): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import machine

__all__ = ["GOALS", "machine_info", "main", "run", "run_synthetic"]

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "translate.json"
WORKLOADS = [("productpage", "v1"), ("details", "v1"), ("ratings", "v1"),
             ("reviews", "v1"), ("reviews", "v2"), ("reviews", "v3")]  # fmt: skip
ROUTES = {name: (CONFIG / "routes" / f"{name}.yaml").read_text() for name in ("all-v1", "jason-v2")}
GOALS = {
    "services": 10_000,
    "full_translation_s": 2.0,  # at `services` services
    "one_change_s": 0.020,  # any mesh size; work proportional to the change
}
# libyaml's emitter: PyYAML's pure-Python one takes minutes for 10,000 services.
_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


# -- bookinfo ---------------------------------------------------------------------------------


def _controller(proxies: int, distinct: bool) -> tuple[Controller, ConfigStore]:
    store = ConfigStore()
    for name in ("services.yaml", "gateway.yaml", "destination-rules.yaml"):
        store.update(str(CONFIG / name), (CONFIG / name).read_text())
    store.update("routes.yaml", ROUTES["all-v1"])
    # Proxies connect before the first round, so the timed forced flush is a full translation
    # (an empty memo), as in the synthetic section; flushed first, each proxy would be
    # translated on connecting and the forced flush would reuse every unit.
    controller = Controller(SnapshotCache(), store)
    for n in range(proxies):
        app, version = WORKLOADS[n % len(WORKLOADS)]
        node = Node(id=f"{app}-{version}-{n}")
        node.metadata.update({"NAMESPACE": "default", "LABELS": {"app": app, "version": version}})
        if distinct:
            node.metadata.update({"WORKLOAD": f"{app}-{version}-{n}"})
        controller.on_stream_request(n + 1, DiscoveryRequest(node=node))
    return controller, store


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run_one(proxies: int, distinct: bool, repeat: int) -> dict[str, Any]:
    full, edit, noop = [], [], []
    for _ in range(repeat):
        controller, store = _controller(proxies, distinct)
        full.append(_timed(functools.partial(controller.flush, force=True)))
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


def _bookinfo_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'proxies':>8} {'shapes':>7} {'full':>9} {'edit':>9} {'unchanged':>10} {'per proxy':>10}"
    )
    for row in rows:
        print(f"{row['proxies']:>8} {row['shapes']:>7} {row['full_s'] * 1000:>7.1f}ms "
              f"{row['edit_s'] * 1000:>7.1f}ms {row['unchanged_s'] * 1000:>8.2f}ms "
              f"{row['edit_s'] / row['proxies'] * 1e6:>8.0f}us")  # fmt: skip


# -- synthetic mesh ---------------------------------------------------------------------------


def _entry_text(index: int, endpoints: int) -> str:
    return str(yaml.dump(service_documents(index, endpoints)[0], Dumper=_DUMPER, sort_keys=False))


def _routing_text(index: int, weight_v1: int = 80) -> str:
    documents = service_documents(index, weight_v1=weight_v1)[1:]  # DestinationRule, VS
    return str(yaml.dump_all(documents, Dumper=_DUMPER, sort_keys=False))


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _memory() -> dict[str, float]:
    """Resident memory now, and the peak (VmHWM and getrusage's maxrss agree on Linux)."""
    return {
        "rss_mb": _status_mb("VmRSS"),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _snapshots(controller: Controller) -> list[Snapshot]:
    """The distinct snapshots served (proxies of one shape share one)."""
    unique: dict[int, Snapshot] = {}
    for proxy_id in controller.proxies():
        snapshot = controller.cache.get_snapshot(proxy_id)
        unique[id(snapshot)] = snapshot
    return list(unique.values())


def _work(controller: Controller) -> dict[str, int]:
    """What the last flush did, summed over the shapes: memo units and resources, and what the
    `Snapshot`s serialized themselves (0 when the memo handed them serialized resources)."""
    memos = controller.memo_stats()
    snapshots = _snapshots(controller)
    return {
        "units_translated": sum(m.units_translated for m in memos),
        "units_reused": sum(m.units_reused for m in memos),
        "resources_serialized": sum(m.resources_serialized for m in memos),
        "resources_reused": sum(m.resources_reused for m in memos),
        "snapshot_resources_serialized": sum(s.stats.resources_serialized for s in snapshots),
    }


def _change(
    controller: Controller, store: ConfigStore, file: str, text: str, service: int
) -> dict[str, Any]:
    """One file changed: the store update and the flush that pushes it, timed apart."""
    gc.collect()
    started = time.perf_counter()
    store.update(file, text)
    updated = time.perf_counter()
    changed = controller.flush()
    done = time.perf_counter()
    return {
        "service": service,
        "update_s": updated - started,
        "flush_s": done - updated,
        "total_s": done - started,
        "proxies_changed": changed,
        **_work(controller),
    }


def _change_summary(changes: list[dict[str, Any]]) -> dict[str, Any]:
    def same(key: str) -> int | list[int]:
        values = sorted({c[key] for c in changes})
        return values[0] if len(values) == 1 else values  # a list means runs disagreed

    return {
        "total_s": statistics.median(c["total_s"] for c in changes),
        "flush_s": statistics.median(c["flush_s"] for c in changes),
        "update_s": statistics.median(c["update_s"] for c in changes),
        "units_translated": same("units_translated"),
        "units_reused": same("units_reused"),
        "resources_serialized": same("resources_serialized"),
        "snapshot_resources_serialized": same("snapshot_resources_serialized"),
        "runs": changes,
    }


def run_synthetic(services: int, endpoints: int, shapes: int, repeat: int) -> dict[str, Any]:
    """One synthetic mesh measured in this process (run it in a fresh one: memory is per
    process). The YAML text is made before any timing; each service is two files, so changing
    one leaves every other object the same object (what the memo compares)."""
    baseline = _memory()
    files: dict[str, str] = {}
    for i in range(services):
        files[f"svc-{i}-entry.yaml"] = _entry_text(i, endpoints)
        files[f"svc-{i}.yaml"] = _routing_text(i)
    # `repeat` changes of each kind, to services spread over the mesh.
    targets = [(r * max(1, services // repeat) + services // 2) % services for r in range(repeat)]
    routes = [(f"svc-{j}.yaml", _routing_text(j, weight_v1=50), j) for j in targets]
    entries = [(f"svc-{j}-entry.yaml", _entry_text(j, endpoints + 1), j) for j in targets]
    text_mb = sum(map(len, files.values())) / 1e6

    store = ConfigStore()
    gc.collect()
    started = time.perf_counter()
    with gc_paused():  # as `ConfigStore.sync` loads a directory
        for file, text in files.items():
            store.update(file, text)
    load_s = time.perf_counter() - started
    del files
    objects = len(store.objects())
    loaded = _memory()

    controller = Controller(SnapshotCache(), store)
    for k in range(shapes):
        node = Node(id=f"sidecar-{k}")
        labels = {"app": "client" if k == 0 else f"client-{k}"}
        node.metadata.update({"NAMESPACE": "default", "LABELS": labels})
        controller.on_stream_request(k + 1, DiscoveryRequest(node=node))
    gc.collect()
    full_s = _timed(lambda: controller.flush(force=True))
    translated = _memory()
    full_work = _work(controller)
    (snapshot, *_) = _snapshots(controller)
    sizes = {
        t.rsplit(".", 1)[-1]: sum(len(r.data) for r in snapshot.resources(t).values())
        for t in RESOURCE_TYPES
    }
    route_change = _change_summary([_change(controller, store, *c) for c in routes])
    endpoint_change = _change_summary([_change(controller, store, *c) for c in entries])
    worst_change = max(route_change["total_s"], endpoint_change["total_s"])
    return {
        "services": services,
        "endpoints": endpoints,
        "shapes": shapes,
        "objects": objects,
        "resources": sum(len(snapshot.resources(t)) for t in RESOURCE_TYPES),
        "resource_bytes": sizes,
        "yaml_mb": text_mb,
        "load_s": load_s,
        "full_s": full_s,
        "full": full_work,
        "memory_mb": {
            "baseline_rss": baseline["rss_mb"],
            "loaded_rss": loaded["rss_mb"],
            "translated_rss": translated["rss_mb"],
            "peak": translated["peak_mb"],
        },
        "route_change": route_change,
        "endpoint_change": endpoint_change,
        "goals_met": {
            "full_translation": full_s <= GOALS["full_translation_s"]
            if services >= GOALS["services"]
            else None,  # the goal is stated for 10,000 services
            "one_change": worst_change <= GOALS["one_change_s"],
        },
    }


def _in_child(services: int, endpoints: int, shapes: int, repeat: int) -> dict[str, Any]:
    """`run_synthetic` in a fresh spawned process, so RSS and peak are this mesh's alone."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(run_synthetic, services, endpoints, shapes, repeat).result()


def _goal(met: bool | None) -> str:
    return "-" if met is None else "ok" if met else "MISS"


def _work_cell(summary: dict[str, Any]) -> str:
    return f"{summary['units_translated']}/{summary['units_reused']}"


def _synthetic_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"synthetic mesh; goals: {GOALS['services']:,} services translated in "
        f"<= {GOALS['full_translation_s']:g} s, one change pushed in "
        f"<= {GOALS['one_change_s'] * 1000:g} ms (work proportional to the change)"
    )
    header = ("services", "E", "K", "objects", "resources", "load s", "full s", "goal",
              "rss MB", "peak MB", "vs ms", "units t/r", "ser", "ep ms", "units t/r", "ser",
              "goal", "snap ser")  # fmt: skip
    lines = [header]
    for row in rows:
        vs, ep = row["route_change"], row["endpoint_change"]
        memory = row["memory_mb"]
        snap = "/".join(str(x["snapshot_resources_serialized"]) for x in (row["full"], vs, ep))
        lines.append((
            str(row["services"]), str(row["endpoints"]), str(row["shapes"]),
            str(row["objects"]), str(row["resources"]), f"{row['load_s']:.2f}",
            f"{row['full_s']:.2f}", _goal(row["goals_met"]["full_translation"]),
            f"{memory['translated_rss'] - memory['baseline_rss']:.0f}", f"{memory['peak']:.0f}",
            f"{vs['total_s'] * 1000:.1f}", _work_cell(vs), str(vs["resources_serialized"]),
            f"{ep['total_s'] * 1000:.1f}", _work_cell(ep), str(ep["resources_serialized"]),
            _goal(row["goals_met"]["one_change"]), snap,
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))


# -- the command ------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Enough to tell whose numbers these are (and whether YAML used libyaml)."""
    return machine.machine_info(libyaml=_DUMPER is not yaml.SafeDumper)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The sections asked for; prints their tables, writes the JSON and returns it."""
    rows = [run_one(n, distinct, args.repeat) for n in args.proxies for distinct in (False, True)]
    if rows:
        _bookinfo_table(rows)
    synthetic = [
        _in_child(s, args.endpoints, args.shapes, args.repeat) for s in sorted(args.services)
    ]
    if synthetic:
        _synthetic_table(synthetic)
    document = {
        "benchmark": "translate",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "repeat": args.repeat,
        "rows": rows,
        "machine_info": machine_info(),
        "synthetic": {
            "goals": GOALS,
            "args": {"endpoints": args.endpoints, "shapes": args.shapes, "repeat": args.repeat},
            "rows": synthetic,
        },
    }
    machine.write_result(args.json, document)
    return document


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--proxies", type=int, nargs="*", help="bookinfo sidecar counts (default 100 1000)"
    )
    parser.add_argument(
        "--services", type=int, nargs="*", help="synthetic mesh sizes (default 1000 10000)"
    )
    parser.add_argument("--endpoints", type=int, default=3, help="endpoints per service (E)")
    parser.add_argument("--shapes", type=int, default=1, help="sidecar shapes (K), synthetic")
    parser.add_argument(
        "--repeat", type=int, default=3, help="bookinfo runs; synthetic changes of each kind"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = parser.parse_args(argv)
    if args.proxies is None and args.services is None:
        args.proxies, args.services = [100, 1000], [1000, 10_000]
    args.proxies, args.services = args.proxies or [], args.services or []
    if args.repeat < 1 or args.endpoints < 1 or args.shapes < 1:
        parser.error("--repeat, --endpoints and --shapes must be positive")
    if min([*args.proxies, *args.services], default=1) < 1:
        parser.error("--proxies and --services must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the JSON."""
    args = parse_args(argv)
    run(args)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
