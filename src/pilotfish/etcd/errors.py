"""What goes wrong talking to etcd, split by what the caller should do about it."""

from __future__ import annotations

from collections.abc import Sequence

from pilotfish.errors import PilotfishError, ValidationError

__all__ = ["ApplyRefused", "EtcdError", "EtcdUnavailable", "RevisionCompacted"]


class EtcdError(PilotfishError):
    """etcd refused a request, or answered something pilotfish did not expect."""


class EtcdUnavailable(EtcdError):
    """No answer from etcd (down, unreachable, no leader, deadline passed): try again later."""


class RevisionCompacted(EtcdError):
    """The history asked for is gone: the caller must re-read everything and start over."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (history kept from revision {compact_revision})")
        self.compact_revision = compact_revision


class ApplyRefused(EtcdError):
    """Objects that may not be written, all of them at once; nothing was written."""

    def __init__(self, errors: Sequence[ValidationError]) -> None:
        self.errors = list(errors)
        super().__init__("nothing written:\n" + "\n".join(f"  {e}" for e in self.errors))
