"""Where config comes from: manifest files today (a watched directory and etcd come later)."""

from __future__ import annotations

from pilotfish.sources.manifests import (
    KINDS,
    ConfigObject,
    LoadResult,
    load_documents,
    load_path,
)
from pilotfish.sources.validate import resolve_host, validate

__all__ = [
    "KINDS",
    "ConfigObject",
    "LoadResult",
    "load_documents",
    "load_path",
    "resolve_host",
    "validate",
]
