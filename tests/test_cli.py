"""The `pilotfish` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pilotfish import __version__
from pilotfish.cli import main
from pilotfish.testing import find_envoy


def test_bootstrap_is_accepted_by_real_envoy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bootstrap", "--node-id", "web-1", "--cluster", "web"]
    assert (
        main([*argv, "--xds-address", "127.0.0.1:15010", "--xds-address", "127.0.0.2:15010"]) == 0
    )
    bootstrap = json.loads(capsys.readouterr().out)
    assert bootstrap["node"] == {
        "id": "web-1",
        "cluster": "web",
        "client_features": ["xds.config.supports-resource-ttl"],
    }
    assert "ads_config" in bootstrap["dynamic_resources"]
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    checked = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_module_entry_point_reports_version_and_errors() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "pilotfish", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert version.returncode == 0 and version.stdout.strip() == f"pilotfish {__version__}"
    bad = subprocess.run(
        [sys.executable, "-m", "pilotfish", "bootstrap", "--node-id", "a", "--cluster", "b",
         "--xds-address", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "expected HOST:PORT, got 'nope'" in bad.stderr
    assert "Traceback" not in bad.stderr
