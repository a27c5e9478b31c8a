"""Write and read config objects in etcd: what `pilotfish apply` and friends stand on.

Every write is one etcd transaction, so a set of objects that belong together (a
VirtualService and the DestinationRule with its subsets) appears to every pilotfish replica at
one revision, never half of it; and nothing is written unless every object is valid.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Self

from pilotfish.errors import ValidationError
from pilotfish.etcd.client import EtcdClient, KeyValue
from pilotfish.etcd.errors import ApplyRefused
from pilotfish.etcd.keys import ObjectKey, decode, encode, file_of, object_key, parse_key
from pilotfish.etcd.url import StoreURL
from pilotfish.sources.manifests import ConfigObject

__all__ = ["EtcdStore"]

log = logging.getLogger("pilotfish.etcd")


class EtcdStore:
    """Config objects under one prefix of an etcd cluster (`etcd://host:port/prefix`)."""

    def __init__(self, url: StoreURL | str, *, timeout: float = 5.0) -> None:
        self.url = url if isinstance(url, StoreURL) else StoreURL.parse(url)
        self._client = EtcdClient(self.url.endpoints, timeout=timeout, wait_for_ready=True)

    def key(self, key: ObjectKey) -> str:
        """The etcd key of (kind, namespace, name)."""
        return object_key(self.url.prefix, key)

    async def apply(self, objects: Sequence[ConfigObject]) -> int:
        """Write every object in one transaction; returns its revision.

        Raises `ApplyRefused` (nothing written) if any object is invalid or defined twice, and
        `EtcdError` if etcd refuses the transaction (e.g. more objects than its --max-txn-ops).
        """
        errors: list[ValidationError] = []
        values: dict[str, bytes] = {}
        first: dict[ObjectKey, ConfigObject] = {}
        for obj in objects:
            if obj.key in first:
                seen = first[obj.key]
                errors.append(
                    ValidationError(
                        f"defined twice (also {seen.file or '<input>'}[{seen.index}])",
                        file=obj.file,
                        index=obj.index,
                        kind=obj.kind,
                        namespace=obj.namespace,
                        name=obj.name,
                    )
                )
                continue
            first[obj.key] = obj
            try:
                values[self.key(obj.key)] = encode(obj).encode("utf-8")
            except ValidationError as error:
                errors.append(error)
        if errors:
            raise ApplyRefused(errors)
        revision, _ = await self._client.txn(values)
        return revision

    async def delete(self, keys: Iterable[ObjectKey]) -> int:
        """Delete objects by (kind, namespace, name) in one transaction; returns its revision.
        Keys that do not exist are ignored."""
        revision, _ = await self._client.txn({}, [self.key(k) for k in keys])
        return revision

    async def get(
        self, kind: str | None = None, namespace: str | None = None, name: str | None = None
    ) -> list[ConfigObject]:
        """The valid objects matching every filter given, sorted by key.

        Values that do not load (written around pilotfish) are logged and left out; see
        `list_all` for the raw values.
        """
        prefix = self.url.prefix + "/"
        if kind is not None:
            prefix += kind + "/"
            if namespace is not None:
                prefix += namespace + "/"
        kvs, _ = await self._client.range_prefix(prefix)
        out = []
        for kv in kvs:
            try:
                key = parse_key(self.url.prefix, kv.key)
                if (namespace is not None and key[1] != namespace) or (
                    name is not None and key[2] != name
                ):
                    continue
                out.append(decode(kv.value.decode("utf-8"), file=file_of(kv.key), key=key))
            except (ValueError, ValidationError) as error:  # UnicodeDecodeError is a ValueError
                log.warning("etcd key %s skipped: %s", kv.key, error)
        return out

    async def list_all(self) -> tuple[list[KeyValue], int]:
        """Every key under the prefix as stored (valid or not), and the revision read at."""
        return await self._client.range_prefix(self.url.prefix + "/")

    async def compact(self, revision: int) -> None:
        """Forget the history before `revision` (watchers behind it must resync)."""
        await self._client.compact(revision)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
