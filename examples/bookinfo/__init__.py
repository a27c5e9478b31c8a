"""Istio's bookinfo driven from Python (`mesh.py`); services and harness: `pilotfish.demo`."""
