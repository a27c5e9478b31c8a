"""`pilotfish demo`: Istio's bookinfo on one machine, behind real Envoys configured by pilotfish.

- `pilotfish.demo.apps`: the bookinfo services (productpage, details, reviews v1-v3, ratings) as
  small local HTTP/JSON apps; `python -m pilotfish.demo.apps` runs them wired directly.
- `pilotfish.demo.bookinfo`: `Bookinfo`, the apps each behind an Envoy sidecar plus an Envoy
  ingress gateway, served by a pilotfish xDS server (`pilotfish.testing.LocalMesh`); the
  manifests it starts from are package data under `pilotfish/demo/config/`.
- `pilotfish.demo.steps`: the routing steps of Istio's traffic-management tasks, measured through
  the gateway and judged against the rules; `run_demo` is the command's body.

Import from the submodules; this package imports nothing, so `python -m` works on each of them.
"""

from __future__ import annotations

__all__: list[str] = []
