"""Generated types for Istio's security.istio.io API (pilotfish's own schema)."""
