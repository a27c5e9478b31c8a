"""Which mTLS mode a workload's inbound port runs in, from PeerAuthentication, as Istio decides.

The most specific policy wins: one selecting the workload (in its namespace; the first by name
if several do), then the namespace's policy without a selector, then the mesh-wide one (in the
root namespace, without a selector). `UNSET` inherits from the next level; a port-level setting
of the workload's policy overrides its own mode. With no policy at all: PERMISSIVE.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from pilotfish.protos.istio.security.v1beta1.peer_authentication_pb2 import PeerAuthentication
from pilotfish.sources import ConfigObject

__all__ = ["ROOT_NAMESPACE", "MtlsMode", "mtls_mode"]

MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
ROOT_NAMESPACE = "istio-system"
_MODES = {
    PeerAuthentication.MutualTLS.DISABLE: "DISABLE",
    PeerAuthentication.MutualTLS.PERMISSIVE: "PERMISSIVE",
    PeerAuthentication.MutualTLS.STRICT: "STRICT",
}


def _spec(obj: ConfigObject) -> PeerAuthentication:
    assert isinstance(obj.spec, PeerAuthentication)
    return obj.spec


def mtls_mode(
    objects: Iterable[ConfigObject],
    namespace: str,
    labels: Mapping[str, str],
    port: int,
    root_namespace: str = ROOT_NAMESPACE,
) -> MtlsMode:
    """The mode of inbound `port` of a workload with `labels` in `namespace`."""
    policies = sorted(
        (o for o in objects if o.kind == "PeerAuthentication"), key=lambda o: (o.namespace, o.name)
    )
    workload = next(
        (
            o
            for o in policies
            if o.namespace == namespace
            and _spec(o).HasField("selector")
            and all(labels.get(k) == v for k, v in _spec(o).selector.match_labels.items())
        ),
        None,
    )
    scoped = next(
        (o for o in policies if o.namespace == namespace and not _spec(o).HasField("selector")),
        None,
    )
    mesh = next(
        (
            o
            for o in policies
            if o.namespace == root_namespace and not _spec(o).HasField("selector")
        ),
        None,
    )
    levels = []
    if workload is not None:
        spec = _spec(workload)
        if port in spec.port_level_mtls:
            levels.append(spec.port_level_mtls[port].mode)
        levels.append(spec.mtls.mode)
    levels += [_spec(o).mtls.mode for o in (scoped, mesh) if o is not None]
    for mode in levels:
        if mode in _MODES:
            return _MODES[mode]  # type: ignore[return-value]
    return "PERMISSIVE"
