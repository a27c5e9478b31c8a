"""etcd as the config source of a scale-out pilotfish: many replicas, one source of truth.

`EtcdStore` writes and reads objects (one key per object, one transaction per write);
`EtcdWatcher` keeps a `pilotfish.sources.ConfigStore` equal to etcd and serves the last good
config through etcd outages. Where the data lives is one URL: `etcd://HOST:PORT[,...]/PREFIX`.
"""

from __future__ import annotations

from pilotfish.etcd.client import KeyValue
from pilotfish.etcd.errors import ApplyRefused, EtcdError, EtcdUnavailable, RevisionCompacted
from pilotfish.etcd.keys import FILE_PREFIX, object_key, parse_key
from pilotfish.etcd.store import EtcdStore
from pilotfish.etcd.url import DEFAULT_PREFIX, StoreURL
from pilotfish.etcd.watch import EtcdWatcher, WatcherStatus

__all__ = [
    "DEFAULT_PREFIX",
    "FILE_PREFIX",
    "ApplyRefused",
    "EtcdError",
    "EtcdStore",
    "EtcdUnavailable",
    "EtcdWatcher",
    "KeyValue",
    "RevisionCompacted",
    "StoreURL",
    "WatcherStatus",
    "object_key",
    "parse_key",
]
