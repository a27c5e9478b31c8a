"""pilotfish's generated protobuf code is in step with its .proto files (tools/gen_protos.py)."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
GENERATOR = ROOT / "tools" / "gen_protos.py"
PROTOS = SRC / "pilotfish" / "protos"


def _generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _generated_modules() -> list[str]:
    return sorted(
        ".".join(path.relative_to(SRC).with_suffix("").parts) for path in PROTOS.rglob("*_pb2.py")
    )


def test_checked_in_generated_code_matches_the_proto_files() -> None:
    result = _generator("--check")
    assert result.returncode == 0, (
        "generated protobuf code is out of date; run `python tools/gen_protos.py`\n" + result.stderr
    )


def test_every_proto_file_has_generated_modules() -> None:
    protos = sorted(PROTOS.rglob("*.proto"))
    assert protos
    for proto in protos:
        for suffix in ("_pb2.py", "_pb2.pyi"):
            assert proto.with_name(proto.stem + suffix).is_file(), proto


def test_check_reports_stale_missing_and_orphaned_files(tmp_path: Path) -> None:
    written = _generator("--out", str(tmp_path))
    assert written.returncode == 0, written.stderr
    assert _generator("--check", "--out", str(tmp_path)).returncode == 0

    generated = sorted(tmp_path.rglob("*_pb2.py"))
    assert len(generated) >= 2
    stale, gone = generated[0], generated[1]
    stale.write_text(stale.read_text() + "# edited by hand\n")
    gone.unlink()
    orphan = tmp_path / "pilotfish" / "protos" / "orphan_pb2.py"
    orphan.write_text("")

    result = _generator("--check", "--out", str(tmp_path))
    assert result.returncode == 1
    assert f"out of date: {stale.relative_to(tmp_path).as_posix()}" in result.stderr
    assert f"missing: {gone.relative_to(tmp_path).as_posix()}" in result.stderr
    assert "no .proto for: pilotfish/protos/orphan_pb2.py" in result.stderr


def test_generated_modules_import_under_pilotfish_protos() -> None:
    names = _generated_modules()
    for name in names:
        module = importlib.import_module(name)
        descriptor = module.DESCRIPTOR
        assert descriptor.name.startswith("pilotfish/protos/"), descriptor.name
        # Istio's packages as Istio names them; our Kubernetes subset under pilotfish.k8s.
        assert descriptor.package.startswith(("istio.", "pilotfish.k8s")), descriptor.package
    assert {
        "pilotfish.protos.istio.security.v1beta1.authorization_policy_pb2",
        "pilotfish.protos.istio.security.v1beta1.peer_authentication_pb2",
        "pilotfish.protos.istio.type.v1beta1.selector_pb2",
        "pilotfish.protos.k8s.registry_pb2",
    } <= set(names)
    assert any(name.startswith("pilotfish.protos.istio.networking.") for name in names), names


def test_no_top_level_istio_package() -> None:
    # Generated code must live under pilotfish.protos, never as a top-level `istio` package.
    assert importlib.util.find_spec("istio") is None
    assert not (SRC / "istio").exists()
