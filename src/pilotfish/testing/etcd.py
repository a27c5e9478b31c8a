"""Run a real etcd (3.4) in tests: the scale-out config source is tested against etcd itself.

The binary comes from PATH or `$PILOTFISH_ETCD`, else from Debian's `etcd-server` package,
downloaded once and unpacked into a cache (`apt-get download` + `dpkg-deb -x`; installing the
package would start a system service). Every etcd started here is stopped by our own code, by
PID: by `EtcdServer.stop`/`close`, the context manager, or, as a last resort, at interpreter exit.
Its data dir outlives `stop()` so a test can stop etcd and start it again on the same data and
client port (an outage), and is removed by `close()`.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from pilotfish.testing.envoy import free_port

__all__ = ["EtcdNotFound", "EtcdServer", "EtcdServerError", "EtcdStartError", "find_etcd"]

_PACKAGE = "etcd-server"
_BINARY_IN_PACKAGE = Path("usr/bin/etcd")
_LOG_TAIL_CHARS = 4000
_STOP_TIMEOUT = 5.0
_START_ATTEMPTS = 5  # fresh ports each time another process grabbed one first


class EtcdServerError(RuntimeError):
    """Base of the errors raised by this harness."""


class EtcdNotFound(EtcdServerError):
    """No etcd binary could be found or fetched."""


class EtcdStartError(EtcdServerError):
    """etcd exited or did not become healthy during start-up (the message carries its log)."""


def _cache_dir() -> Path:
    base = os.environ.get("PILOTFISH_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "pilotfish"
    return root / _PACKAGE


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_etcd() -> str:
    """The etcd binary: `$PILOTFISH_ETCD`, `etcd` on PATH, the cached extract, else fetch it.

    An explicit `$PILOTFISH_ETCD` wins over PATH so a pinned binary cannot be shadowed.
    Raises `EtcdNotFound` listing everything that was tried.
    """
    tried = []
    explicit = os.environ.get("PILOTFISH_ETCD")
    if explicit:
        if _is_executable(Path(explicit)):
            return explicit
        tried.append(f"$PILOTFISH_ETCD={explicit} (not an executable file)")
    else:
        tried.append("$PILOTFISH_ETCD (not set)")
    on_path = shutil.which("etcd")
    if on_path:
        return on_path
    tried.append("`etcd` on PATH (none)")
    cache = _cache_dir()
    cached = cache / _BINARY_IN_PACKAGE
    if _is_executable(cached):
        return str(cached)
    tried.append(f"cached extract {cached} (missing)")
    try:
        return str(_fetch(cache))
    except EtcdNotFound as error:
        tried.append(str(error))
    raise EtcdNotFound("no etcd binary; tried: " + "; ".join(tried))


def _fetch(cache: Path) -> Path:
    """Download the Debian package and unpack it into `cache`.

    Unpacked into a temp dir next to `cache`, then renamed into place: two pytest processes
    fetching at once both succeed, and neither ever sees a half-written binary.
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise EtcdNotFound(f"fetching {_PACKAGE} needs apt-get and dpkg-deb (not found)")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{_PACKAGE}-", dir=cache.parent))
    except OSError as error:
        raise EtcdNotFound(f"cannot write the cache {cache.parent}: {error}") from error
    try:
        deb = _download(work)
        unpacked = work / "root"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)], cwd=work)
        if not _is_executable(unpacked / _BINARY_IN_PACKAGE):
            raise EtcdNotFound(f"{deb.name} has no {_BINARY_IN_PACKAGE}")
        with contextlib.suppress(OSError):  # lost the race: another process put it there
            unpacked.rename(cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    binary = cache / _BINARY_IN_PACKAGE
    if not _is_executable(binary):
        raise EtcdNotFound(f"{cache} exists but holds no executable {_BINARY_IN_PACKAGE}")
    return binary


def _download(work: Path) -> Path:
    try:
        _run(["apt-get", "download", _PACKAGE], cwd=work)
    except EtcdNotFound:
        if os.geteuid() != 0:
            raise
        # A fresh container has no package lists yet; only root may fetch them.
        _run(["apt-get", "update", "-qq"], cwd=work)
        _run(["apt-get", "download", _PACKAGE], cwd=work)
    debs = sorted(work.glob(f"{_PACKAGE}_*.deb"))
    if not debs:
        raise EtcdNotFound(f"`apt-get download {_PACKAGE}` produced no .deb")
    return debs[-1]


def _run(argv: list[str], cwd: Path) -> None:
    try:
        result = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise EtcdNotFound(f"`{' '.join(argv)}` failed: {error}") from error
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()[-1000:]
        raise EtcdNotFound(f"`{' '.join(argv)}` exited with {result.returncode}: {output}")


_live: set[EtcdServer] = set()
_live_lock = threading.Lock()


@atexit.register
def _close_all() -> None:
    """Safety net: stop etcds a test forgot to close and remove their data dirs."""
    with _live_lock:
        leftover = list(_live)
    for server in leftover:
        server.close()


class EtcdServer:
    """One single-member etcd on 127.0.0.1 with ports picked at run time and a temp data dir.

    `with EtcdServer() as etcd:` starts it and always closes it. `stop()` then `start()` brings
    it back with the same data and the same client port, so clients can reconnect.
    """

    def __init__(self, *, binary: str | None = None, name: str = "etcd") -> None:
        self.binary = binary
        self.name = name
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._client_port: int | None = None
        self._peer_port: int | None = None
        self._home_port: int | None = None  # the usual client port, during a hidden start
        self._log_offset = 0

    def __repr__(self) -> str:
        state = "stopped" if self._proc is None else f"pid={self._proc.pid}"
        return f"<EtcdServer {self.name} {state} client_port={self._client_port}>"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 15.0, *, hidden: bool = False) -> Self:
        """Start etcd and wait until `/health` on the client URL says it has a leader.

        The first start picks free ports (retrying if another process takes one first); a
        restart reuses them, and the data dir. Raises `EtcdStartError` with the log tail.

        `hidden=True` (a restart) serves the same data on another client port, which clients
        of the usual one cannot reach: how a test changes data "while etcd is unreachable"
        (`endpoint` is the hidden one until the next `stop()`).
        """
        if self.running:
            raise EtcdServerError(f"{self!r} is already running")
        if hidden:
            if self._client_port is None:
                raise EtcdServerError("a hidden start needs an etcd that has run before")
            self._home_port, self._client_port = self._client_port, free_port()
        binary = self.binary or find_etcd()
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"pilotfish-{self.name}-"))
            with _live_lock:
                _live.add(self)
        fixed_ports = self._client_port is not None
        attempts = 1 if fixed_ports else _START_ATTEMPTS
        for attempt in range(attempts):
            if not fixed_ports:
                self._client_port, self._peer_port = free_port(), free_port()
                shutil.rmtree(self.data_dir, ignore_errors=True)  # no member of the old ports
            self._launch(binary)
            try:
                self._wait_healthy(timeout)
                return self
            except EtcdStartError:
                self.stop()
                log = self.log_text()[self._log_offset :]
                if attempt + 1 < attempts and "address already in use" in log:
                    continue
                if not fixed_ports:  # never served: the next start may pick other ports
                    self._client_port = self._peer_port = None
                raise
        raise AssertionError("unreachable")

    def _launch(self, binary: str) -> None:
        client = f"http://127.0.0.1:{self._client_port}"
        peer = f"http://127.0.0.1:{self._peer_port}"
        argv = [
            binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            # A single member elects itself; short ticks make that take milliseconds.
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "error",
        ]  # fmt: skip
        self._log_offset = len(self.log_text())
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.workdir,
                # Keep terminal signals (Ctrl-C) away from etcd: we stop it ourselves.
                start_new_session=True,
            )

    def _wait_healthy(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                if self._healthy():
                    return
            code = self._proc.poll()
            if code is not None:
                raise EtcdStartError(
                    f"{self.name} exited with code {code} during start-up:\n{self._log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise EtcdStartError(
                    f"{self.name} not healthy within {timeout:g}s:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=1.0)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            body = json.loads(response.read())
        finally:
            conn.close()
        return response.status == 200 and body.get("health") == "true"

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop etcd by PID (SIGTERM, then SIGKILL after `timeout`); keeps data and ports."""
        proc, self._proc = self._proc, None
        if self._home_port is not None:  # back to the usual port for the next start
            self._client_port, self._home_port = self._home_port, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop etcd and remove its data dir. Idempotent."""
        self.stop()
        with _live_lock:
            _live.discard(self)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._client_port = self._peer_port = None

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- facts --------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """PID of the running etcd (raises if it is not running)."""
        if self._proc is None:
            raise EtcdServerError(f"{self!r} is not running")
        return self._proc.pid

    @property
    def client_port(self) -> int:
        if self._client_port is None:
            raise EtcdServerError(f"{self!r} has no client port (never started)")
        return self._client_port

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:PORT` of the client (gRPC) listener."""
        return f"127.0.0.1:{self.client_port}"

    def url(self, prefix: str = "pilotfish") -> str:
        """A pilotfish store URL for this etcd: `etcd://127.0.0.1:PORT/prefix`."""
        return f"etcd://{self.endpoint}/{prefix.strip('/')}"

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise EtcdServerError(f"{self!r} has no work dir (never started, or closed)")
        return self._workdir

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def _log_path(self) -> Path:
        return self.workdir / "etcd.log"

    def log_text(self) -> str:
        """What etcd wrote to stdout/stderr (errors only, given `--log-level error`)."""
        if self._workdir is None:
            return ""
        with contextlib.suppress(OSError):
            return self._log_path.read_text(errors="replace")
        return ""

    def _log_tail(self) -> str:
        text = self.log_text()
        return text if len(text) <= _LOG_TAIL_CHARS else "..." + text[-_LOG_TAIL_CHARS:]
