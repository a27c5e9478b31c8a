"""ADS push benchmark: how long and how much server CPU it takes to converge N proxies.

The server serves a `SnapshotCache(node_hash=by_cluster)`, so every simulated proxy shares one
snapshot and its prepared response bytes; `--workers W` runs W server processes on one port
(SO_REUSEPORT), each with its own cache built identically. Simulated proxies run in K other
processes, each an ADS stream on its own TCP connection that behaves like Envoy (CDS, then EDS for
the clusters, then LDS, then RDS for the route; every response ACKed; each lists its
subscriptions in an order of its own, as Envoys do). A coordinator (this
process) drives both over pipes, so the load generator never shares an interpreter with a server.

It measures initial convergence, then `--repeat` pushes of a snapshot in which every type has a new
version: wall time until every proxy ACKed all four types, server and load-generator CPU, server
RSS, and the snapshot's serialization counters, which must not grow with N (serialize once).

    .venv/bin/python bench/ads_push.py --clients 100 1000 --clusters 100 --endpoints 1

`--transport grpc native` measures both server transports (grpc.aio, and pilotfish's own HTTP/2),
one row each per N; `floor` is the issue's serialize-once baseline (`bench.floor`), a
calibration. `--client-impl` picks the proxies' client: `h2` (`bench.h2client`, raw asyncio
HTTP/2, the default: several times cheaper, so the generator is not what gets measured) or
`grpc` (grpc.aio). `--protocol sotw delta` runs the proxies over state-of-the-world ADS
(`StreamAggregatedResources`, the default) and/or incremental ADS (`DeltaAggregatedResources`),
one row each.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON (`bench.ads_run`)."""
    from bench.ads_run import main as run_main

    return run_main(argv)


if __name__ == "__main__":
    # Only this runs here: spawned workers run this file again (as `__mp_main__`), and a server
    # worker must hold the server alone, not the load generator (its RSS is measured).
    if not __package__:  # run as a script (bench/ is sys.path[0]): make `bench` importable
        # (os.path, not pathlib: the workers' RSS would carry pathlib's 0.6 MB)
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    sys.exit(main())
