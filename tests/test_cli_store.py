"""`pilotfish apply`, `get` and `delete` against a real etcd."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from pilotfish.cli import main
from pilotfish.etcd.client import EtcdClient
from pilotfish.testing import EtcdServer, free_port

ROUTES = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v1}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
"""
BAD = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: shop}
spec:
  host: ratings
  trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}
"""


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_apply_get_delete(
    etcd_server: EtcdServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ["--store", etcd_server.url("cli")]
    (tmp_path / "routes.yaml").write_text(ROUTES)
    status, out, err = _run(capsys, "apply", str(tmp_path), *store)
    assert status == 0, err
    assert out.splitlines() == [
        "VirtualService shop/reviews applied",
        "DestinationRule shop/reviews applied",
    ]
    assert "2 objects applied at revision" in err

    status, out, _ = _run(capsys, "get", *store)
    assert status == 0
    assert out.splitlines() == [
        "KIND             NAMESPACE  NAME",
        "DestinationRule  shop       reviews",
        "VirtualService   shop       reviews",
    ]
    status, out, _ = _run(capsys, "get", "vs", "reviews", "-n", "shop", "-o", "yaml", *store)
    assert status == 0
    (document,) = yaml.safe_load_all(out)
    assert document["kind"] == "VirtualService"
    assert document["spec"]["http"][0]["route"][0]["destination"]["subset"] == "v1"
    status, out, _ = _run(capsys, "get", "destinationrules", "-o", "name", *store)
    assert out == "DestinationRule/shop/reviews\n"
    status, _, err = _run(capsys, "get", "virtualservices", "nope", *store)
    assert status == 1 and "VirtualService default/nope not found" in err

    # An invalid object anywhere in an apply: nothing of it is written.
    (tmp_path / "bad.yaml").write_text(BAD)
    (tmp_path / "routes.yaml").write_text(ROUTES.replace("subset: v1", "subset: v2"))
    status, out, err = _run(capsys, "apply", str(tmp_path), *store)
    assert status == 1
    assert "bad.yaml[0] DestinationRule shop/ratings: spec.trafficPolicy.connectionPool" in out
    assert "nothing applied" in err
    status, out, _ = _run(capsys, "get", "vs", "-n", "shop", "-o", "yaml", *store)
    assert "subset: v1" in out and "subset: v2" not in out

    status, out, err = _run(capsys, "delete", "vs", "reviews", "ghost", "-n", "shop", *store)
    assert status == 1  # one of them was not there
    assert out.splitlines() == [
        "VirtualService shop/reviews deleted",
        "VirtualService shop/ghost not found",
    ]
    (tmp_path / "bad.yaml").unlink()
    status, out, _ = _run(capsys, "delete", "-f", str(tmp_path / "routes.yaml"), *store)
    assert status == 1
    assert "DestinationRule shop/reviews deleted" in out
    status, out, _ = _run(capsys, "get", *store)
    assert out.splitlines() == ["KIND  NAMESPACE  NAME"]

    # A value written around pilotfish that does not load: `get` leaves it out, `delete`
    # removes it all the same.
    async def put_broken() -> None:
        raw = EtcdClient([etcd_server.endpoint])  # as `etcdctl put` would
        try:
            await raw.txn({"cli/VirtualService/shop/broken": b"spec: [not yaml"})
        finally:
            await raw.close()

    asyncio.run(put_broken())
    status, out, _ = _run(capsys, "delete", "vs", "broken", "-n", "shop", *store)
    assert (status, out) == (0, "VirtualService shop/broken deleted\n")


def test_store_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "routes.yaml").write_text(ROUTES)
    status, _, err = _run(capsys, "get", "--store", "http://nowhere")
    assert status == 2 and err.startswith("pilotfish get: --store http://nowhere: ")
    status, _, err = _run(capsys, "get", "widgets", "--store", "etcd://127.0.0.1:1/x")
    assert status == 2 and "unknown kind 'widgets'" in err
    dead = f"etcd://127.0.0.1:{free_port()}/x"
    status, _, err = _run(capsys, "apply", str(tmp_path), "--store", dead, "--timeout", "0.5")
    assert status == 2
    assert err.startswith(f"pilotfish apply: {dead}: ") and len(err.splitlines()) == 1, err
