"""Generated types for Istio's shared istio.type API (pilotfish's own schema)."""
