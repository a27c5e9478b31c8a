"""The subset of Kubernetes' core and discovery APIs the service registry reads.

Only the fields pilotfish uses are declared; manifests are parsed with unknown fields ignored,
so real Kubernetes YAML (with status, sessionAffinity, ...) loads as it is.
"""
