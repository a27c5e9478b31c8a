"""Manifests of `pilotfish demo` (package data, read from this directory; no code)."""
