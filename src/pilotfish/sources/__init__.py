"""Where config comes from: manifest files, kept per file as the last good version (etcd later)."""

from __future__ import annotations

from pilotfish.sources.manifests import (
    KINDS,
    ConfigObject,
    LoadResult,
    load_documents,
    load_path,
)
from pilotfish.sources.store import ConfigStore, StoreChange
from pilotfish.sources.validate import resolve_host, validate

__all__ = [
    "KINDS",
    "ConfigObject",
    "ConfigStore",
    "LoadResult",
    "StoreChange",
    "load_documents",
    "load_path",
    "resolve_host",
    "validate",
]
