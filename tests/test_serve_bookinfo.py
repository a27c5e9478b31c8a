"""`pilotfish serve` on a directory holding Istio's bookinfo manifests, with the bookinfo apps
behind real Envoy sidecars (bootstrapped the way `pilotfish bootstrap` does) and a gateway.

The directory is what an operator would have: bookinfo's Services, subsets, gateway and routes,
plus WorkloadEntries saying where each app's sidecar listens. Editing the reviews
VirtualService moves real traffic; an invalid edit is reported and traffic stays; fixing it
applies it.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.demo.apps import App, Details, ProductPage, Ratings, Reviews
from pilotfish.demo.bookinfo import Page, get_page
from pilotfish.testing import EnvoyProcess, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
BOOKINFO = ROOT.parent / "shared" / "conformance" / "istio-bookinfo"
NETWORKING = BOOKINFO / "networking"

WORKLOAD = """---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}}}
spec:
  address: 127.0.0.1
  labels: {{app: {app}, version: {version}}}
  ports: {{http: {port}}}
  serviceAccount: bookinfo-{app}
"""


@dataclass
class Mesh:
    config: Path
    process: subprocess.Popen[str]
    admin_port: int
    gateway_port: int
    log: list[str] = field(default_factory=list)

    def page(self, user: str | None = None) -> Page:
        return get_page("127.0.0.1", self.gateway_port, "/productpage",
                    {"end-user": user} if user else {})  # fmt: skip

    def versions(self, user: str | None, n: int = 10) -> Counter[str | None]:
        return Counter(self.page(user).reviews_version for _ in range(n))

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return str(r.read().decode())


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    config = tmp_path_factory.mktemp("bookinfo")
    shutil.copy(BOOKINFO / "platform" / "kube" / "bookinfo.yaml", config)
    for name in ("bookinfo-gateway.yaml", "destination-rule-all.yaml"):
        shutil.copy(NETWORKING / name, config)
    shutil.copy(NETWORKING / "virtual-service-all-v1.yaml", config / "routes.yaml")
    apps: dict[str, App] = {
        "productpage-v1": ProductPage(),
        "details-v1": Details(),
        "ratings-v1": Ratings(),
        "reviews-v1": Reviews("v1"),
        "reviews-v2": Reviews("v2"),
        "reviews-v3": Reviews("v3"),
    }
    with ExitStack() as stack:
        inbound = {name: free_port() for name in apps}
        workloads = ""
        for name, app in apps.items():
            stack.enter_context(app.start())
            service, version = name.split("-")
            workloads += WORKLOAD.format(name=name, app=service, version=version,
                                         port=inbound[name])  # fmt: skip
        (config / "workloads.yaml").write_text(workloads)
        process = subprocess.Popen(
            [sys.executable, "-m", "pilotfish", "serve", "--config", str(config),
             "--xds-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0"],
            cwd=ROOT, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        stack.callback(_stop, process)
        log: list[str] = []
        xds_port, admin_port = _started(process, log)
        xds = ("127.0.0.1", xds_port)
        for name, app in apps.items():
            service, version = name.split("-")
            outbound = free_port()
            metadata = {
                "NAMESPACE": "default",
                "LABELS": {"app": service, "version": version},
                "SERVICE_ACCOUNT": f"bookinfo-{service}",
                "WORKLOAD": name,
                "PORT_MAP": {"9080": outbound},
                "APP_PORTS": {"9080": app.port},
            }
            bootstrap = envoy_bootstrap(node_id=name, cluster=service, xds_address=xds,
                                        node_metadata=metadata)  # fmt: skip
            stack.enter_context(EnvoyProcess(bootstrap, name=name)).wait_ready()
            app.outbound = ("127.0.0.1", outbound)
        gateway_port = free_port()
        gateway = envoy_bootstrap(
            node_id="istio-ingressgateway",
            cluster="istio-ingressgateway",
            xds_address=xds,
            node_metadata={"NAMESPACE": "istio-system", "PROXY_KIND": "gateway",
                           "LABELS": {"istio": "ingressgateway"},
                           "PORT_MAP": {"8080": gateway_port}},
        )  # fmt: skip
        stack.enter_context(EnvoyProcess(gateway, name="gateway")).wait_ready()
        running = Mesh(config, process, admin_port, gateway_port, log)
        wait_until(lambda: running.page().reviews_version == "v1", timeout=15)
        yield running


def _started(process: subprocess.Popen[str], lines: list[str]) -> tuple[int, int]:
    assert process.stderr is not None
    pattern = r"serving xDS on [\d.]+:(\d+), admin on http://[\d.]+:(\d+)"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (line := process.stderr.readline()):
        lines.append(line)
        if match := re.search(pattern, line):
            return int(match.group(1)), int(match.group(2))
    raise AssertionError("serve did not start:\n" + "".join(lines))


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _moved(mesh: Mesh, user: str, version: str) -> float:
    started = time.monotonic()
    wait_until(lambda: mesh.page(user).reviews_version == version, timeout=5, interval=0.02)
    return time.monotonic() - started


def test_bookinfo_served_from_a_directory(mesh: Mesh) -> None:
    assert mesh.versions(None) == {"v1": 10}
    page = mesh.page("jason")
    assert page.status == 200 and page.json["details"]["author"]
    syncz = json.loads(mesh.admin("/debug/syncz"))
    assert {e["proxy"] for e in syncz} >= {"productpage-v1", "istio-ingressgateway"}
    assert all(e["synced"] for e in syncz), syncz


def test_editing_the_reviews_route_moves_traffic_and_a_bad_edit_does_not(mesh: Mesh) -> None:
    routes = mesh.config / "routes.yaml"
    jason = (NETWORKING / "virtual-service-reviews-jason-v2-v3.yaml").read_text()
    good = (NETWORKING / "virtual-service-all-v1.yaml").read_text()
    # Replace the reviews route of all-v1 with jason-v2-v3's: one file, one edit.
    documents = [d for d in good.split("---") if "name: reviews\n" not in d]
    routes.write_text("---".join([*documents, "\n" + jason]))
    assert _moved(mesh, "jason", "v2") < 1.0
    assert mesh.versions(None) == {"v3": 10}
    # A broken edit (a regex RE2 refuses) is reported; traffic keeps the last good config.
    routes.write_text(
        "---".join([*documents, "\n" + jason.replace("exact: jason", "regex: '(?=j)'")])
    )
    config = wait_until(lambda: (c := json.loads(mesh.admin("/debug/config")))["errors"] and c,
                        timeout=5)  # fmt: skip
    (problems,) = config["errors"].values()
    assert problems[0]["field"] == "spec.http[0].match[0].headers[end-user].regex"
    time.sleep(0.5)
    assert mesh.versions("jason") == {"v2": 10}
    # Fixed: all of it applies (back to all v1).
    routes.write_text(good)
    assert _moved(mesh, "jason", "v1") < 1.0
    assert mesh.versions(None) == {"v1": 10}
    assert json.loads(mesh.admin("/debug/config"))["errors"] == {}
