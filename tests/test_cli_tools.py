"""`pilotfish validate` and `pilotfish translate`: exit statuses, exact problem lines, and a
translation real Envoy accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.cli import main
from pilotfish.protos import (
    Cluster,
    ClusterLoadAssignment,
    Listener,
    Message,
    RouteConfiguration,
    resource_type,
)
from pilotfish.testing import EnvoyProcess, ServerThread, wait_until
from tests.certs import workload_secrets

BOOKINFO = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "istio-bookinfo"
PLATFORM = BOOKINFO / "platform" / "kube" / "bookinfo.yaml"
NETWORKING = BOOKINFO / "networking"
PRODUCTPAGE = ["--label", "app=productpage", "--label", "version=v1"]

VS = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n"

# name -> (manifest, the exact problem line after "<file>")
INVALID: dict[str, tuple[str, str]] = {
    "weight-sum": (
        VS + "spec:\n  hosts: [reviews]\n  http:\n  - route:\n"
        "    - destination: {host: reviews, subset: v1}\n      weight: 50\n"
        "    - destination: {host: reviews, subset: v2}\n      weight: 30\n",
        "[0] VirtualService default/reviews: spec.http[0].route: "
        "destination weights add up to 80, not 100",
    ),
    "regex": (
        VS + "spec:\n  hosts: [reviews]\n  http:\n  - match:\n    - uri: {regex: '/a(?=b)'}\n"
        "    route:\n    - destination: {host: reviews}\n",
        "[0] VirtualService default/reviews: spec.http[0].match[0].uri.regex: ",
    ),
    "redirect-code": (
        VS + "spec:\n  hosts: [reviews]\n  http:\n  - redirect: {uri: /new, redirectCode: 200}\n",
        "[0] VirtualService default/reviews: spec.http[0].redirect.redirectCode: "
        "must be one of 301, 302, 303, 307, 308",
    ),
    "duplicate-subset": (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\n"
        "spec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n"
        "  - {name: v1, labels: {version: v2}}\n",
        "[0] DestinationRule default/reviews: spec.subsets[1].name: ",
    ),
    "service-entry-port": (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext}\n"
        "spec:\n  hosts: [api.example.com]\n  resolution: DNS\n"
        "  ports:\n  - {number: 70000, name: tls, protocol: TLS}\n",
        "[0] ServiceEntry default/ext: spec.ports[0].number: ",
    ),
    "https-without-tls": (
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\n"
        "spec:\n  selector: {istio: ingressgateway}\n  servers:\n"
        "  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*']\n",
        "[0] Gateway default/gw: spec.servers[0].tls: ",
    ),
    "bad-yaml": (
        VS.replace("{name: reviews}", "{name: reviews") + "spec: [\n",
        ": not valid YAML: ",
    ),
    "api-version": (
        VS.replace("/v1\n", "/v2\n", 1)
        + "spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n",
        "[0] VirtualService default/reviews: apiVersion: ",
    ),
    "unknown-enum": (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\n"
        "spec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer: {simple: FASTEST}\n",
        "[0] DestinationRule default/reviews: spec.trafficPolicy.loadBalancer.simple: ",
    ),
}


# -- validate ---------------------------------------------------------------------------------


def test_validate_accepts_all_of_bookinfo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(BOOKINFO)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    notes = captured.err.strip().splitlines()
    summary = notes.pop()
    files = len(list(BOOKINFO.rglob("*.yaml")))
    assert summary.startswith(f"42 objects valid, 0 invalid in {files} files")
    # The platform file's Deployments and ServiceAccounts are notes, not errors.
    assert notes and all(n.startswith("note: ") and str(PLATFORM) in n for n in notes)
    assert any("Deployment default/reviews-v1" in n for n in notes)


def test_validate_quiet_prints_nothing_when_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--quiet", str(PLATFORM), str(NETWORKING)]) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("name", list(INVALID))
def test_validate_reports_the_field(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, expected = INVALID[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(manifest)
    assert main(["validate", str(path)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1, captured.out
    assert lines[0].startswith(f"{path}{expected}"), lines[0]
    assert captured.err.strip().endswith("0 objects valid, 1 invalid in 1 file")


def test_validate_keeps_going_past_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, (manifest, _) in INVALID.items():
        (tmp_path / f"{name}.yaml").write_text(manifest)
    good = (NETWORKING / "virtual-service-all-v1.yaml").read_text()
    (tmp_path / "good.yaml").write_text(good)
    assert main(["validate", "-q", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == len(INVALID)
    assert captured.err == ""


def test_validate_missing_path_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: no such file or directory" in capsys.readouterr().err


def test_validate_entry_point_exit_status(tmp_path: Path) -> None:
    manifest, expected = INVALID["weight-sum"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(manifest)
    result = subprocess.run(
        [sys.executable, "-m", "pilotfish", "validate", str(NETWORKING), str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == f"{bad}{expected}\n"
    assert "0 invalid" not in result.stderr and ", 1 invalid in " in result.stderr
    assert "Traceback" not in result.stderr
    good = subprocess.run(
        [sys.executable, "-m", "pilotfish", "validate", "-q", str(NETWORKING)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (good.returncode, good.stdout, good.stderr) == (0, "", "")


# -- translate --------------------------------------------------------------------------------


def _translate(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert main(["translate", str(PLATFORM), str(NETWORKING), *argv]) == 0
    out = capsys.readouterr().out
    return yaml.safe_load(out) if "yaml" in argv else json.loads(out)


def _names(resources: list[dict[str, Any]]) -> set[str]:
    return {r.get("name") or r["clusterName"] for r in resources}


def test_translate_sidecar(capsys: pytest.CaptureFixture[str]) -> None:
    data = _translate(capsys, *PRODUCTPAGE)
    assert data["translator"]
    assert data["proxy"]["kind"] == "sidecar"
    assert data["proxy"]["labels"] == {"app": "productpage", "version": "v1"}
    assert list(data["versions"]) == ["lds", "rds", "cds", "eds", "sds"]
    assert all(v.startswith(f"{data['translator']}/") for v in data["versions"].values())
    assert "outbound|9080|v1|reviews.default.svc.cluster.local" in _names(data["clusters"])
    assert "0.0.0.0_9080" in _names(data["listeners"])
    assert "9080" in _names(data["routes"])
    assert data["secrets"] == []
    # Resources are protobuf JSON, Any fields typed.
    listener = next(x for x in data["listeners"] if x["name"] == "0.0.0.0_9080")
    typed = listener["filterChains"][0]["filters"][0]["typedConfig"]
    assert typed["@type"].endswith("HttpConnectionManager")


def test_translate_yaml_is_the_same_data(capsys: pytest.CaptureFixture[str]) -> None:
    as_json = _translate(capsys, *PRODUCTPAGE)
    as_yaml = _translate(capsys, *PRODUCTPAGE, "-o", "yaml")
    assert as_yaml == as_json


def test_translate_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    data = _translate(capsys, "--gateway", "--label", "istio=ingressgateway")
    assert data["proxy"]["kind"] == "gateway"
    assert data["proxy"]["id"].startswith("router~")
    assert "0.0.0.0_8080" in _names(data["listeners"])
    assert "http.8080" in _names(data["routes"])


def test_translate_selected_types(capsys: pytest.CaptureFixture[str]) -> None:
    data = _translate(capsys, *PRODUCTPAGE, "--type", "cds", "--type", "lds", "--proxy-id", "pp")
    assert list(data) == ["translator", "proxy", "versions", "listeners", "clusters"]
    assert list(data["versions"]) == ["lds", "cds"]
    assert data["proxy"]["id"] == "pp"


def test_translate_refuses_invalid_input_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, expected = INVALID["weight-sum"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(manifest)
    argv = ["translate", str(PLATFORM), str(bad), *PRODUCTPAGE]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{bad}{expected}" in captured.err
    assert main([*argv, "--allow-errors"]) == 0
    captured = capsys.readouterr()
    assert f"{bad}{expected}" in captured.err
    assert "outbound|9080||reviews.default.svc.cluster.local" in _names(
        json.loads(captured.out)["clusters"]
    )


def test_translate_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["translate", str(tmp_path / "nope")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    for bad in (["--label", "novalue"], ["--locality", "a/b/c/d"], ["--type", "xds"]):
        with pytest.raises(SystemExit) as exit_:
            main(["translate", str(PLATFORM), *bad])
        assert exit_.value.code == 2
    capsys.readouterr()


# -- real Envoy accepts the printed config ------------------------------------------------------

_MESSAGES: dict[str, tuple[str, type[Message]]] = {
    "cds": ("clusters", Cluster),
    "eds": ("endpoints", ClusterLoadAssignment),
    "lds": ("listeners", Listener),
    "rds": ("routes", RouteConfiguration),
}


@pytest.fixture
def served() -> Iterator[tuple[SnapshotCache, ServerThread]]:
    cache = SnapshotCache()
    with ServerThread(cache) as server:
        yield cache, server


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param(["--label", "app=sleep"], id="client-sidecar"),
        # Its labels select the productpage Service, which has no endpoints here: it must not
        # get an inbound listener clashing with the outbound one on 0.0.0.0:9080.
        pytest.param(PRODUCTPAGE, id="productpage-sidecar"),
    ],
)
def test_envoy_acks_translate_output(
    labels: list[str], served: tuple[SnapshotCache, ServerThread]
) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "pilotfish", "translate", str(PLATFORM), str(NETWORKING),
         *labels, "--service-account", "bookinfo-productpage"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    output: dict[str, Any] = json.loads(printed.stdout)
    resources = {
        short: [json_format.ParseDict(item, kind()) for item in output[key]]
        for short, (key, kind) in _MESSAGES.items()
    }
    # ISTIO_MUTUAL clusters refer to SDS secrets `default` and `ROOTCA`: `pilotfish serve` has a
    # CA for them, a dry run does not, so the test brings its own (as LocalMesh does).
    assert output["secrets"] == []
    assert "ROOTCA" in json.dumps(output["clusters"])
    spiffe = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
    versions = {short: output["versions"][short] for short in _MESSAGES}
    snapshot = Snapshot({**resources, "sds": workload_secrets(spiffe)}, versions=versions)
    cache, server = served
    node_id = output["proxy"]["id"]
    cache.set_snapshot(node_id, snapshot)
    bootstrap = envoy_bootstrap(node_id=node_id, cluster="bookinfo", xds_address=server.address)
    type_urls = {short: resource_type(short).type_url for short in _MESSAGES}

    def settled() -> bool:
        """Every type ACKed at the printed version, or something NACKed."""
        status = cache.status(node_id)
        if status is None:
            return False
        types = [status.types.get(url) for url in type_urls.values()]
        if any(t is not None and t.nacks for t in types):
            return True
        return all(
            t is not None and t.acked_version == versions[short]
            for short, t in zip(type_urls, types, strict=True)
        )

    with EnvoyProcess(bootstrap) as envoy:
        wait_until(settled, timeout=20, message="Envoy ACKs or NACKs every type")
        status = cache.status(node_id)
        assert status is not None
        nacks = {url: t.last_nack for url, t in status.types.items() if t.nacks}
        assert nacks == {}
        envoy.wait_ready()
        # What Envoy runs is what `translate` printed, at the printed versions.
        assert envoy.dynamic_clusters() == dict.fromkeys(
            _names(output["clusters"]), versions["cds"]
        )
        wait_until(
            lambda: (
                envoy.dynamic_listeners()
                == dict.fromkeys(_names(output["listeners"]), versions["lds"])
            ),
            message="every listener active",
        )
        wait_until(
            lambda: set(envoy.dynamic_route_configs()) == _names(output["routes"]),
            message="every route configuration",
        )
        assert envoy.stat("cluster_manager.warming_clusters") == 0
        assert envoy.stat("listener_manager.total_listeners_warming") == 0
        assert envoy.stat("listener_manager.lds.update_rejected") == 0
        assert envoy.stat("cluster_manager.cds.update_rejected") == 0
