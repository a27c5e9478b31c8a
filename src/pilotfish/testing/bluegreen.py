"""A service with two versions, blue and green, and a route sending everything to one of them:
the smallest config whose change is seen in traffic (tests and benchmarks flip the route and
watch requests through real Envoys move)."""

from __future__ import annotations

__all__ = ["COLOURS", "HOST", "blue_green_service", "route_to"]

HOST = "web.example"
COLOURS = ("blue", "green")

_SERVICE = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: web{namespace}}}
spec:
  hosts: [web.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {blue}}}, labels: {{version: blue}}}}
  - {{address: 127.0.0.1, ports: {{http: {green}}}, labels: {{version: green}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web{namespace}}}
spec:
  host: web.example
  subsets: [{{name: blue, labels: {{version: blue}}}}, {{name: green, labels: {{version: green}}}}]
"""
_ROUTE = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web{namespace}}}
spec:
  hosts: [web.example]
  http:
  - route: [{{destination: {{host: web.example, subset: {colour}}}}}]
"""


def _in(namespace: str | None) -> str:
    return f", namespace: {namespace}" if namespace else ""


def blue_green_service(blue: int, green: int, namespace: str | None = None) -> str:
    """`web.example` port 80 (a ServiceEntry and a DestinationRule, as YAML): subset blue is
    127.0.0.1:`blue`, subset green 127.0.0.1:`green`."""
    return _SERVICE.format(blue=blue, green=green, namespace=_in(namespace))


def route_to(colour: str, namespace: str | None = None) -> str:
    """A VirtualService sending every request for `web.example` to subset `colour`."""
    return _ROUTE.format(colour=colour, namespace=_in(namespace))
