"""pilotfish: an Envoy xDS control plane as a Python library and server."""

__all__ = ["__version__"]

__version__ = "0.1.0"
