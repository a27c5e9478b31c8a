"""Generated types for Istio's networking.istio.io API (pilotfish's own schema)."""
