"""`pilotfish serve --ca-dir --xds-tls`: proxies connect with certificates from `pilotfish cert`
and may only act as the identity in their certificate."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pilotfish.testing import EnvoyProcess, HttpUpstream, free_port, wait_until
from pilotfish.testing.bluegreen import blue_green_service, route_to

ROOT = Path(__file__).resolve().parent.parent


def _pilotfish(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "pilotfish", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _metric(admin: int, name: str, code: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf'^{name}{{code="{code}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_xds_over_tls_with_identity_checks(tmp_path: Path) -> None:
    config, ca = tmp_path / "config", tmp_path / "ca"
    config.mkdir()
    with HttpUpstream("blue") as blue, HttpUpstream("green") as green:
        (config / "web.yaml").write_text(blue_green_service(blue.port, green.port))
        (config / "route.yaml").write_text(route_to("blue"))
        process = subprocess.Popen(
            [sys.executable, "-m", "pilotfish", "serve", "--config", str(config),
             "--ca-dir", str(ca), "--xds-tls",
             "--xds-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0"],
            cwd=ROOT, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert process.stderr is not None
            pattern = r"serving xDS on [\d.]+:(\d+), admin on http://[\d.]+:(\d+)"
            deadline, found = time.monotonic() + 20, None
            while found is None and time.monotonic() < deadline:
                found = re.search(pattern, process.stderr.readline())
            assert found is not None
            xds, admin = found.group(1), int(found.group(2))
            keys = tmp_path / "client"
            _pilotfish("cert", "--ca-dir", str(ca), "--namespace", "default",
                       "--service-account", "client", "--out", str(keys))  # fmt: skip
            secure = ["--xds-ca", str(keys / "root.pem"), "--xds-cert", str(keys / "cert.pem"),
                      "--xds-key", str(keys / "key.pem"), "--namespace", "default"]  # fmt: skip
            port = free_port()
            honest = json.loads(_pilotfish(
                "bootstrap", "--node-id", "client-1", "--cluster", "client", "--xds-address",
                f"127.0.0.1:{xds}", *secure, "--service-account", "client",
                "--port-map", f"80={port}",
            ))  # fmt: skip
            impostor = json.loads(_pilotfish(
                "bootstrap", "--node-id", "admin-1", "--cluster", "admin", "--xds-address",
                f"127.0.0.1:{xds}", *secure, "--service-account", "admin",
                "--port-map", f"80={free_port()}",
            ))  # fmt: skip
            with EnvoyProcess(honest, name="honest") as good, EnvoyProcess(impostor) as bad:
                good.wait_ready()  # the impostor never is: it never gets any config

                def colour() -> str:
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{port}/", headers={"host": "web.example"}
                    )
                    with urllib.request.urlopen(request, timeout=5) as response:
                        return str(response.headers["x-upstream"])

                wait_until(lambda: colour() == "blue", timeout=10)
                # The same certificate claiming another service account gets nothing.
                wait_until(
                    lambda: _metric(admin, "pilotfish_xds_refused_streams_total",
                                    "permission_denied") >= 1, timeout=10,
                )  # fmt: skip
                assert bad.dynamic_listeners() == {}
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
    log = process.stderr.read() if process.stderr else ""
    assert "stopped" in log
