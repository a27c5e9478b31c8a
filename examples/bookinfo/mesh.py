"""Istio's bookinfo on one machine: local Python services, each behind a real Envoy sidecar, and
an Envoy ingress gateway, all configured only through pilotfish.

    .venv/bin/python -m examples.bookinfo.mesh [--requests 20] [config files or directories...]

Without arguments it serves the manifests under `examples/bookinfo/config/` and walks through
the routing scenarios in `config/routes/`, printing which reviews version answered, per user.
`Bookinfo` is also the harness of the end-to-end tests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from examples.bookinfo.apps import App, Details, ProductPage, Ratings, Reviews
from pilotfish.sources import ConfigObject, load_path
from pilotfish.testing import LocalMesh, MeshProxy

__all__ = ["CONFIG", "Bookinfo", "Page", "main"]

CONFIG = Path(__file__).resolve().parent / "config"
SERVICE_PORT = 9080
GATEWAY_PORT = 8080


class Page:
    """A product page answer seen through the gateway."""

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.status = status
        self.headers = dict(headers)
        self.json: dict[str, Any] = json.loads(body) if body.startswith(b"{") else {}

    @property
    def reviews_version(self) -> str | None:
        """`v1`/`v2`/`v3`, or None when reviews were unavailable."""
        version = self.json.get("reviews_version")
        return str(version) if version else None


class Bookinfo:
    """The apps, their sidecars and the gateway; `apply` serves new config objects.

    `services` are the Kubernetes Service manifests of the registry; `productpage` and
    `reviews` timeouts are constructor arguments so tests can scale bookinfo's down.
    """

    def __init__(
        self,
        services: Iterable[ConfigObject] | None = None,
        *,
        reviews_timeout: float = 3.0,
        ratings_timeout: float | None = None,
        extra_details: int = 0,
    ) -> None:
        objects = (
            list(services) if services is not None else load_path(CONFIG / "services.yaml").objects
        )
        self.mesh = LocalMesh(objects)
        self.apps: dict[str, App] = {
            "productpage-v1": ProductPage(reviews_timeout=reviews_timeout),
            "details-v1": Details(),
            "ratings-v1": Ratings(),
            "reviews-v1": Reviews("v1", ratings_timeout=ratings_timeout),
            "reviews-v2": Reviews("v2", ratings_timeout=ratings_timeout),
            "reviews-v3": Reviews("v3", ratings_timeout=ratings_timeout),
        }
        for n in range(extra_details):
            self.apps[f"details-v1-{n + 2}"] = Details(podname=f"details-v1-{n + 2}")
        self.sidecars: dict[str, MeshProxy] = {}
        self.gateway: MeshProxy | None = None

    def start(self) -> Self:
        """Start the control plane, every app and its sidecar, and the gateway."""
        self.mesh.start()
        try:
            for name, app in self.apps.items():
                app.start()
                service, version = name.split("-")[:2]
                sidecar = self.mesh.add_sidecar(
                    name,
                    app_port=app.port,
                    labels={"app": service, "version": version},
                    service_account=f"bookinfo-{service}",
                )
                app.outbound = sidecar.outbound(SERVICE_PORT)
                self.sidecars[name] = sidecar
            self.gateway = self.mesh.add_gateway("istio-ingressgateway", ports=[GATEWAY_PORT])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything started, Envoys first."""
        self.mesh.stop()
        for app in self.apps.values():
            app.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def apply(self, objects: Iterable[ConfigObject], timeout: float = 10.0) -> None:
        """Serve `objects` and wait until every Envoy has ACKed them."""
        self.mesh.apply(objects)
        self.mesh.wait_converged(timeout)

    def page(self, user: str | None = None, path: str = "/productpage") -> Page:
        """GET the product page through the gateway, as `user` (the `end-user` header)."""
        assert self.gateway is not None
        host, port = self.gateway.outbound(GATEWAY_PORT)
        headers = {"end-user": user} if user else {}
        return _get(host, port, path, headers)

    def call(
        self,
        client: str,
        service: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Page:
        """GET `http://<service>:9080<path>` the way app `client` would: via its sidecar."""
        host, port = self.sidecars[client].outbound(SERVICE_PORT)
        return _get(
            host, port, path, {"host": f"{service}:{SERVICE_PORT}", **(headers or {})}, timeout
        )


def _get(
    host: str, port: int, path: str, headers: Mapping[str, str], timeout: float = 10.0
) -> Page:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=dict(headers))
        response = connection.getresponse()
        return Page(response.status, response.read(), dict(response.getheaders()))
    finally:
        connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="requests per user and scenario")
    parser.add_argument("paths", nargs="*", type=Path, help="routing config files or directories")
    args = parser.parse_args(argv)
    base = [
        *load_path(CONFIG / "gateway.yaml").objects,
        *load_path(CONFIG / "destination-rules.yaml").objects,
    ]
    scenarios = args.paths or sorted((CONFIG / "routes").glob("*.yaml"))
    with Bookinfo() as bookinfo:
        print(
            f"bookinfo up: 6 sidecars and a gateway on 127.0.0.1:"
            f"{bookinfo.gateway.outbound(GATEWAY_PORT)[1] if bookinfo.gateway else 0}",
            flush=True,
        )
        for scenario in scenarios:
            loaded = load_path(scenario)
            for error in loaded.errors:
                print(f"  rejected: {error}", file=sys.stderr)
            bookinfo.apply([*base, *loaded.objects])
            print(f"{scenario.name}:")
            for user in (None, "jason"):
                seen: Counter[str] = Counter()
                for _ in range(args.requests):
                    page = bookinfo.page(user)
                    ratings = page.json.get("ratings") or {}
                    stars = (
                        "unavailable"
                        if "error" in ratings
                        else (next(iter(ratings.values()))["color"] if ratings else "no stars")
                    )
                    seen[f"{page.status} reviews-{page.reviews_version} ({stars})"] += 1
                who = user or "anonymous"
                print(f"  {who:>9}: " + ", ".join(f"{n}x {k}" for k, n in sorted(seen.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
