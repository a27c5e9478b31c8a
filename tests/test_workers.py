"""`pilotfish serve --workers 2`: two processes on one xDS port, connections spread over both by
the kernel, each serving the same config at the same version; SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import grpc.aio

from pilotfish.protos import ADS_SERVICE, CLUSTER_TYPE, DiscoveryRequest, DiscoveryResponse, Node

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 40
_READY = re.compile(r"serving xDS on [\d.]+:(\d+), admin on http://[\d.]+:(\d+)")


def _proxies(admin_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/debug/syncz", timeout=5) as r:
        return len(json.loads(r.read()))


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


async def _hold(port: int, admin: list[int]) -> tuple[list[str], list[int]]:
    """CLIENTS ADS streams, each on its own TCP connection: the CDS version each got, and how
    many proxies each worker reports while all streams are open."""
    assert ADS_SERVICE.stream is not None
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
                for _ in range(CLIENTS)]  # fmt: skip
    try:
        calls = []
        for n, channel in enumerate(channels):
            call = channel.stream_stream(
                ADS_SERVICE.stream,
                request_serializer=DiscoveryRequest.SerializeToString,
                response_deserializer=DiscoveryResponse.FromString,
            )()
            node = Node(id=f"client-{n}", cluster="clients")
            await call.write(DiscoveryRequest(node=node, type_url=CLUSTER_TYPE))
            calls.append(call)
        versions = []
        for call in calls:
            response = await asyncio.wait_for(call.read(), 10)
            assert isinstance(response, DiscoveryResponse)
            versions.append(response.version_info)
        counts = await asyncio.to_thread(lambda: [_proxies(p) for p in admin])
        return versions, counts
    finally:
        for channel in channels:
            await channel.close()


def test_two_workers_share_one_port_and_stop_together() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "pilotfish", "serve", "--config", str(ROOT / "examples/serve"),
         "--workers", "2", "--xds-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        found: list[re.Match[str]] = []
        log: list[str] = []
        deadline = time.monotonic() + 30
        while len(found) < 2 and time.monotonic() < deadline:
            log.append(process.stderr.readline())
            if match := _READY.search(log[-1]):
                found.append(match)
        assert len(found) == 2, "".join(log)
        (port,) = {int(m.group(1)) for m in found}  # one xDS port for both
        admin = [int(m.group(2)) for m in found]  # an admin port each
        workers = _children(process.pid)
        assert len(workers) == 2

        versions, counts = asyncio.run(_hold(port, admin))
        # Both workers translated the same config into the same version...
        assert len(set(versions)) == 1 and versions[0].startswith("istio-1/")
        # ...and the kernel spread the connections: each has some, together all of them.
        assert sum(counts) == CLIENTS and min(counts) > 0, counts

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        rest = process.stderr.read()
        assert "stopped 2 workers" in rest and "exited with" not in rest, rest
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
