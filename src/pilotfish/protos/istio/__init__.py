"""pilotfish's own schemas for Istio's APIs (generated protobuf modules)."""
