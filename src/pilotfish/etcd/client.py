"""A small typed asyncio client for the etcd v3 calls pilotfish needs, over aetcd's stubs.

aetcd's own `Client` cannot range at a revision or page through a range, talks to one member,
and its watcher turns a compaction into a callback error and drops the status codes. So this
module drives the generated gRPC stubs that aetcd ships (`aetcd.rpc`) on our own channel and
returns plain dataclasses. Several endpoints are tried in turn: after a failure, `reset()`
moves to the next one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aetcd.rpc as _pb  # type: ignore[import-untyped]
import grpc
import grpc.aio

from pilotfish.etcd.errors import EtcdError, EtcdUnavailable, RevisionCompacted

__all__ = ["EtcdClient", "Event", "KeyValue", "WatchBatch", "prefix_end"]

_PAGE = 1000
# Find a dead connection within ~15 s even when no packet says so (etcd lets clients ping every
# 5 s while a stream is open); redial quickly once etcd is back, whatever the outage lasted.
_CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)
# Like clientv3.WithRequireLeader: a member cut off from its cluster ends our watch instead of
# leaving it silently stale.
_REQUIRE_LEADER = (("hasleader", "true"),)
_UNAVAILABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


@dataclass(frozen=True)
class KeyValue:
    """A key as stored: its value and the revisions that created and last changed it."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0

    @property
    def text(self) -> str:
        return self.value.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Event:
    """A put or a delete; a delete's `kv.mod_revision` is the revision of the deletion."""

    kind: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True)
class WatchBatch:
    """One watch response. `revision`: every change up to it has been delivered (0: unknown,
    as in the response confirming the watch was created)."""

    events: tuple[Event, ...]
    revision: int
    created: bool = False


def prefix_end(prefix: bytes) -> bytes:
    """The range end that selects every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


class EtcdClient:
    """One gRPC channel to one etcd member at a time; calls time out after `timeout` s.

    `wait_for_ready`: with a single endpoint, a call made while it is unreachable waits (up to
    the timeout) for it to come back instead of failing at once: right for one-shot commands,
    wrong for a watcher that must report the outage and has its own retries.
    """

    def __init__(
        self, endpoints: Sequence[str], *, timeout: float = 5.0, wait_for_ready: bool = False
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready and len(self.endpoints) == 1
        self._current = 0
        self._channel: grpc.aio.Channel | None = None
        self._kv: Any = None
        self._watch: Any = None

    @property
    def endpoint(self) -> str:
        """The member in use (or to be used by the next call)."""
        return self.endpoints[self._current]

    def _stubs(self) -> tuple[Any, Any]:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.endpoint, options=_CHANNEL_OPTIONS)
            self._kv = _pb.KVStub(self._channel)
            self._watch = _pb.WatchStub(self._channel)
        return self._kv, self._watch

    async def reset(self) -> None:
        """Drop the channel; the next call dials the next endpoint afresh."""
        channel, self._channel = self._channel, None
        self._kv = self._watch = None
        self._current = (self._current + 1) % len(self.endpoints)
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        self._kv = self._watch = None
        if channel is not None:
            await channel.close()

    async def _unary(self, method: str, request: Any) -> Any:
        """Call a KV method; with several members, an unreachable one is skipped for the next."""
        for attempt in range(len(self.endpoints)):
            kv, _ = self._stubs()
            try:
                return await getattr(kv, method)(
                    request, timeout=self.timeout, wait_for_ready=self.wait_for_ready
                )
            except grpc.aio.AioRpcError as error:
                more = attempt + 1 < len(self.endpoints)
                if error.code() == grpc.StatusCode.UNAVAILABLE and more:
                    await self.reset()
                    continue
                raise _error(error, self.endpoint) from error
        raise AssertionError("unreachable")

    # -- KV -----------------------------------------------------------------------------------

    async def range_prefix(self, prefix: str, *, revision: int = 0) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` as of one revision (the latest if 0), paging through big
        ranges at that same revision; returns the keys (sorted) and the revision."""
        start, end = prefix.encode(), prefix_end(prefix.encode())
        out: list[KeyValue] = []
        while True:
            request = _pb.RangeRequest(key=start, range_end=end, revision=revision, limit=_PAGE)
            response = await self._unary("Range", request)
            revision = revision or int(response.header.revision)
            out.extend(_key_value(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return out, revision
            start = bytes(response.kvs[-1].key) + b"\0"

    async def txn(self, puts: Mapping[str, bytes], deletes: Sequence[str] = ()) -> tuple[int, int]:
        """Put and delete keys in one transaction (all or nothing); returns (revision, deleted)."""
        ops = [
            _pb.RequestOp(request_put=_pb.PutRequest(key=k.encode(), value=v))
            for k, v in puts.items()
        ]
        ops += [
            _pb.RequestOp(request_delete_range=_pb.DeleteRangeRequest(key=k.encode()))
            for k in deletes
        ]
        response = await self._unary("Txn", _pb.TxnRequest(success=ops))
        deleted = sum(
            int(r.response_delete_range.deleted)
            for r in response.responses
            if r.WhichOneof("response") == "response_delete_range"
        )
        return int(response.header.revision), deleted

    async def compact(self, revision: int) -> None:
        """Drop the history before `revision` (physically, so a watch sees it at once)."""
        await self._unary("Compact", _pb.CompactionRequest(revision=revision, physical=True))

    # -- watch --------------------------------------------------------------------------------

    async def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[WatchBatch, None]:
        """Changes under `prefix` from `start_revision` on, one batch per etcd response.

        Ends only by raising: `RevisionCompacted` when that history is gone, `EtcdUnavailable`
        when the stream breaks, `EtcdError` when etcd cancels the watch. Use with
        `contextlib.aclosing` so the stream is cancelled when the caller stops early.
        """
        _, stub = self._stubs()
        endpoint = self.endpoint
        call = stub.Watch(metadata=_REQUIRE_LEADER)
        try:
            create = _pb.WatchCreateRequest(
                key=prefix.encode(),
                range_end=prefix_end(prefix.encode()),
                start_revision=start_revision,
                progress_notify=True,
            )
            await call.write(_pb.WatchRequest(create_request=create))
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise EtcdUnavailable(f"etcd {endpoint} closed the watch stream")
                yield _batch(response)
        except grpc.aio.AioRpcError as error:
            raise _error(error, endpoint) from error
        finally:
            call.cancel()


def _key_value(kv: Any) -> KeyValue:
    return KeyValue(
        key=bytes(kv.key).decode("utf-8", errors="replace"),
        value=bytes(kv.value),
        mod_revision=int(kv.mod_revision),
        create_revision=int(kv.create_revision),
    )


def _batch(response: Any) -> WatchBatch:
    if response.compact_revision:
        raise RevisionCompacted(int(response.compact_revision))
    if response.canceled:
        raise EtcdError(f"etcd cancelled the watch: {response.cancel_reason or 'no reason'}")
    events = tuple(
        Event("delete" if e.type == _pb.Event.DELETE else "put", _key_value(e.kv))
        for e in response.events
    )
    if events:
        return WatchBatch(events, events[-1].kv.mod_revision)
    if response.created:
        return WatchBatch((), 0, created=True)
    # A progress notification: nothing happened under the prefix up to this revision.
    return WatchBatch((), int(response.header.revision))


def _error(error: grpc.aio.AioRpcError, endpoint: str) -> EtcdError:
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return RevisionCompacted(0)
    message = f"etcd {endpoint}: {code.name}: {details}"
    if code in _UNAVAILABLE:
        return EtcdUnavailable(message)
    if "too many operations in txn" in details:
        message += " (etcd's --max-txn-ops, 128 by default, limits the objects per apply)"
    elif "request is too large" in details:
        message += " (etcd's --max-request-bytes, 1.5 MiB by default, limits one apply)"
    return EtcdError(message)
