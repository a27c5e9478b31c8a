"""Fixtures shared by several test modules."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from pilotfish.security import CertificateAuthority
from tests.certs import Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    pki = Pki(CertificateAuthority.load_or_create(tmp / "ca"), tmp)
    (tmp / "root.pem").write_bytes(pki.root)
    return pki


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection]]:
    """Both ends of a `multiprocessing` pipe (the bench's proxies report to a tracker over one)."""
    ours, theirs = multiprocessing.Pipe()
    yield ours, theirs
    ours.close()
    theirs.close()
