"""Istio's bookinfo on one machine: the local services of `pilotfish.demo.apps`, each behind a
real Envoy sidecar, and an Envoy ingress gateway, all configured only through pilotfish.

    with Bookinfo() as bookinfo:
        routing = ("gateway.yaml", "destination-rules.yaml", "routes/all-v1.yaml")
        bookinfo.apply(config_objects(*routing))
        bookinfo.page("jason").reviews_version   # "v1"

`Bookinfo` is the harness of `pilotfish demo` and of the end-to-end tests. The manifests it
starts from (Services, the gateway, DestinationRules, the demo's routing steps) are package data
under `CONFIG`.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pilotfish.demo.apps import RATINGS_UNAVAILABLE, App, Details, ProductPage, Ratings, Reviews
from pilotfish.sources import ConfigObject, load_path
from pilotfish.testing import LocalMesh, MeshProxy

__all__ = [
    "CONFIG",
    "GATEWAY_PORT",
    "SERVICE_PORT",
    "Bookinfo",
    "Page",
    "config_objects",
    "get_page",
]

CONFIG = Path(__file__).resolve().parent / "config"
"""The demo's manifests: services.yaml, gateway.yaml, destination-rules.yaml, routes/*.yaml."""
SERVICE_PORT = 9080
GATEWAY_PORT = 8080


def config_objects(*names: str) -> list[ConfigObject]:
    """The objects of the manifests `names` (paths relative to `CONFIG`), in order.

    Raises `ValueError` if one does not load cleanly: they ship with pilotfish.
    """
    objects: list[ConfigObject] = []
    for name in names:
        loaded = load_path(CONFIG / name)
        if loaded.errors:
            raise ValueError(f"{name}: " + "; ".join(str(error) for error in loaded.errors))
        objects.extend(loaded.objects)
    return objects


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

    @property
    def ratings_unavailable(self) -> bool:
        """Whether the reviews shown say that ratings are unavailable."""
        ratings = self.json.get("ratings")
        return isinstance(ratings, dict) and ratings.get("error") == RATINGS_UNAVAILABLE

    @property
    def stars(self) -> str:
        """What the page shows for ratings: a star colour, `no stars` or `unavailable`."""
        ratings = self.json.get("ratings")
        if not isinstance(ratings, dict) or not ratings:
            return "no stars"
        if "error" in ratings:
            return "unavailable"
        return str(next(iter(ratings.values())).get("color"))


class Bookinfo:
    """The apps, their sidecars and the gateway; `apply` serves new config objects.

    `services` are the Kubernetes Service manifests of the registry (default: `CONFIG`'s
    services.yaml); the `reviews` and `ratings` timeouts are constructor arguments so tests can
    scale bookinfo's down; `extra_details` adds more details-v1 instances.
    """

    def __init__(
        self,
        services: Iterable[ConfigObject] | None = None,
        *,
        reviews_timeout: float = 3.0,
        ratings_timeout: float | None = None,
        extra_details: int = 0,
    ) -> None:
        objects = list(services) if services is not None else config_objects("services.yaml")
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
        """Start the control plane, every app and its sidecar, and the gateway.

        If anything fails (or Ctrl-C arrives) on the way, what was started is stopped again.
        """
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
        """Stop everything started, Envoys first (by PID). Idempotent."""
        try:
            self.mesh.stop()
        finally:
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

    @property
    def envoys(self) -> dict[str, MeshProxy]:
        """Every Envoy started (sidecars and the gateway), by proxy id."""
        return dict(self.mesh.proxies)

    @property
    def gateway_address(self) -> tuple[str, int]:
        """Where the ingress gateway listens for bookinfo's port 8080."""
        if self.gateway is None:
            raise RuntimeError("bookinfo is not running")
        return self.gateway.outbound(GATEWAY_PORT)

    def apply(self, objects: Iterable[ConfigObject], timeout: float = 10.0) -> None:
        """Serve `objects` and wait until every Envoy has ACKed them."""
        self.mesh.apply(objects)
        self.mesh.wait_converged(timeout)

    def page(self, user: str | None = None, path: str = "/productpage") -> Page:
        """GET the product page through the gateway, as `user` (the `end-user` header)."""
        host, port = self.gateway_address
        headers = {"end-user": user} if user else {}
        return get_page(host, port, path, headers)

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
        return get_page(
            host, port, path, {"host": f"{service}:{SERVICE_PORT}", **(headers or {})}, timeout
        )


def get_page(
    host: str, port: int, path: str, headers: Mapping[str, str], timeout: float = 10.0
) -> Page:
    """GET `path` from `host:port` (a gateway or a sidecar listener) as a `Page`."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path, headers=dict(headers))
        response = connection.getresponse()
        return Page(response.status, response.read(), dict(response.getheaders()))
    finally:
        connection.close()
