"""Translators: pure functions from high-level config to Envoy resources.

`pilotfish.translators.build` holds the small, explicit Envoy resource builders that custom
control planes, tests and the Istio translators share.
"""

from __future__ import annotations

__all__: list[str] = []
