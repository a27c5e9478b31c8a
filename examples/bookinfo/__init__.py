"""Istio's bookinfo sample, as small local Python services for demos and end-to-end tests."""
