"""`pilotfish serve`: the control plane for a directory of Istio manifests, or for a config store
(`--store etcd://...`) shared by any number of replicas.

Settings come from flags, else `PILOTFISH_<NAME>` environment variables, else a YAML config file
(`--config-file`, keys as the long flags with underscores), else the defaults. Serves xDS and
the admin endpoints on loopback unless told otherwise. SIGTERM or SIGINT drains the streams and
exits; a second signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pilotfish.admin import AdminServer
from pilotfish.cache import SnapshotCache
from pilotfish.commands import CommandError, address, host_port
from pilotfish.commands.workers import supervise
from pilotfish.controller import Controller
from pilotfish.gcpause import tune_for_serving
from pilotfish.metrics import Metrics
from pilotfish.security import CertificateAuthority, WorkloadSecrets
from pilotfish.sources import ConfigStore
from pilotfish.sources.watch import DirectoryWatcher
from pilotfish.xds.auth import Authenticator, SpiffeAuthenticator, TokenAuthenticator
from pilotfish.xds.native import native_tls
from pilotfish.xds.server import Transport, XdsServer, server_credentials

if TYPE_CHECKING:  # grpc (etcd's client, the grpc transport) is loaded only when used
    import grpc

    from pilotfish.etcd import EtcdWatcher

__all__ = ["Settings", "register", "settings_from"]

log = logging.getLogger("pilotfish.serve")


@dataclass(frozen=True)
class Settings:
    """What `serve` runs with, after flags, environment and config file are merged."""

    config: Path | None = None
    store: str = ""
    workers: int = 1
    transport: Transport = "native"
    max_connection_age: float = 1800.0
    xds_address: tuple[str, int] = ("127.0.0.1", 15010)
    admin_address: tuple[str, int] = ("127.0.0.1", 15014)
    debounce: float = 0.1
    max_delay: float = 10.0
    grace: float = 5.0
    log_level: str = "info"
    ca_dir: Path | None = None
    cert_ttl: float = 86400.0
    xds_tls: bool = False
    xds_token: str = ""


def _transport(text: str) -> Transport:
    if text not in ("grpc", "native"):
        raise ValueError(f"expected grpc or native, got {text!r}")
    return "grpc" if text == "grpc" else "native"


_CONVERT: dict[str, Any] = {
    "config": Path,
    "store": str,
    "workers": int,
    "transport": _transport,
    "max_connection_age": float,
    "xds_address": address,
    "admin_address": address,
    "debounce": float,
    "max_delay": float,
    "grace": float,
    "log_level": str,
    "ca_dir": Path,
    "cert_ttl": float,
    "xds_tls": lambda text: text.lower() in ("1", "true", "yes", "on"),
    "xds_token": str,
}


def register(commands: Any) -> None:
    """Add the `serve` subcommand."""
    serve = commands.add_parser(
        "serve",
        help="serve a directory of Istio manifests to Envoy proxies",
        description=(
            "Watch a directory of Istio (networking.istio.io) and Kubernetes Service manifests, "
            "translate them for every connected Envoy and serve the result over xDS. Each "
            "setting can also come from PILOTFISH_<NAME> (e.g. PILOTFISH_XDS_ADDRESS) or from "
            "--config-file."
        ),
    )
    serve.add_argument("--config", metavar="DIR", help="the manifest directory to serve")
    serve.add_argument(
        "--store",
        metavar="URL",
        help="serve the config store etcd://HOST:PORT[,HOST:PORT...]/PREFIX instead of a "
        "directory (replicas given the same store serve identical config)",
    )
    serve.add_argument(
        "--transport",
        choices=["native", "grpc"],
        help="native: pilotfish's own HTTP/2 server, about a third of grpc's CPU per message "
        "(default); grpc: grpc.aio",
    )
    serve.add_argument(
        "--workers",
        metavar="K",
        help="K server processes sharing the xDS port (SO_REUSEPORT), e.g. one per core; each "
        "has its own cache and admin port (the given one + its index) (default 1)",
    )
    serve.add_argument(
        "--max-connection-age",
        metavar="SECONDS",
        help="close each proxy connection after about this long (+-10%%) so proxies reconnect "
        "and load spreads over replicas (default 1800; 0: never)",
    )
    serve.add_argument(
        "--xds-address", metavar="HOST:PORT", help="where proxies connect (default 127.0.0.1:15010)"
    )
    serve.add_argument(
        "--admin-address",
        metavar="HOST:PORT",
        help="/healthz, /readyz, /metrics, /debug/* (default 127.0.0.1:15014)",
    )
    serve.add_argument(
        "--debounce",
        metavar="SECONDS",
        help="quiet period before translating changes (default 0.1)",
    )
    serve.add_argument(
        "--max-delay",
        metavar="SECONDS",
        help="translate at the latest this long after a change (default 10)",
    )
    serve.add_argument(
        "--grace", metavar="SECONDS", help="time given to streams to end on shutdown (default 5)"
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--ca-dir",
        metavar="DIR",
        help="run the workload CA with its root kept here (created on first start): every proxy "
        "gets its SPIFFE certificate over SDS and sidecars speak mutual TLS",
    )
    serve.add_argument(
        "--xds-tls",
        action="store_const",
        const="true",
        help="serve xDS over TLS (a certificate from the CA, --ca-dir) and require each proxy's "
        "client certificate, whose identity must match the node it claims",
    )
    serve.add_argument("--xds-token", help="accept this bearer token for any node (development)")
    serve.add_argument(
        "--cert-ttl",
        metavar="SECONDS",
        help="workload certificate lifetime (default 86400; renewed at half)",
    )
    serve.add_argument("--config-file", metavar="FILE", help="YAML file with any of the above")
    serve.set_defaults(func=run)


def settings_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Merge flags, `PILOTFISH_*` environment and the config file (in that priority)."""
    env = dict(os.environ if environ is None else environ)
    from_file: dict[str, Any] = {}
    config_file = args.config_file or env.get("PILOTFISH_CONFIG_FILE")
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise CommandError(f"cannot read config file {config_file}: {error}") from error
        if not isinstance(loaded, dict):
            raise CommandError(f"config file {config_file}: expected a mapping")
        from_file = {str(k).replace("-", "_"): v for k, v in loaded.items()}
        unknown = set(from_file) - set(_CONVERT)
        if unknown:
            raise CommandError(f"config file {config_file}: unknown settings {sorted(unknown)}")
    values: dict[str, Any] = {}
    for name, convert in _CONVERT.items():
        raw = getattr(args, name, None)
        origin = f"--{name.replace('_', '-')}"
        if raw is None and f"PILOTFISH_{name.upper()}" in env:
            raw, origin = env[f"PILOTFISH_{name.upper()}"], f"PILOTFISH_{name.upper()}"
        if raw is None and name in from_file:
            raw, origin = from_file[name], f"{config_file}: {name}"
        if raw is None:
            continue
        try:
            values[name] = convert(str(raw))
        except (ValueError, argparse.ArgumentTypeError) as error:
            raise CommandError(f"{origin}: {error}") from error
    if ("config" in values) == bool(values.get("store")):
        raise CommandError(
            "give a config directory (--config DIR) or a store (--store etcd://...), not both"
            if "config" in values
            else "no config: give --config DIR or --store etcd://HOST:PORT/PREFIX"
        )
    return Settings(**values)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT."""
    settings = settings_from(args)
    if settings.config is not None and not settings.config.is_dir():
        raise CommandError(f"config directory {settings.config} does not exist")
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # we log what a change did
    if settings.workers < 1:
        raise CommandError(f"--workers must be at least 1, got {settings.workers}")
    if settings.workers > 1:
        if settings.ca_dir is not None:
            # Made once here, so K workers starting at once do not each create a root.
            _load_ca(settings.ca_dir)
        return supervise(settings, settings.workers)
    tune_for_serving()
    return asyncio.run(serve(settings))


def _load_ca(directory: Path) -> CertificateAuthority:
    try:
        return CertificateAuthority.load_or_create(directory)
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot use CA directory {directory}: {error}") from error


def _xds_security(
    settings: Settings, workload_secrets: WorkloadSecrets | None
) -> tuple[grpc.ServerCredentials | ssl.SSLContext | None, Authenticator | None]:
    """TLS with client certificates checked against the node (--xds-tls), a token, or neither."""
    if settings.xds_tls and settings.xds_token:
        raise CommandError("--xds-tls and --xds-token exclude each other")
    if settings.xds_token:
        return None, TokenAuthenticator({settings.xds_token: None})
    if not settings.xds_tls:
        return None, None
    if workload_secrets is None:
        raise CommandError("--xds-tls needs the CA: give --ca-dir too")
    ca = workload_secrets.ca
    issued = ca.issue("istio-system", "pilotfish", ttl=timedelta(days=365))
    make = native_tls if settings.transport == "native" else server_credentials
    credentials = make(issued.cert_pem, issued.key_pem, ca.trust_bundle())
    return credentials, SpiffeAuthenticator(ca.trust_domain, is_revoked=ca.is_revoked)


async def _load_store(url: str, store: ConfigStore, timeout: float = 10.0) -> EtcdWatcher:
    """Start watching the config store into `store`; fail (CommandError) if the first load
    does not complete within `timeout`: a replica with nothing to serve must not start."""
    from pilotfish.etcd import EtcdWatcher

    try:
        watcher = EtcdWatcher(url, store)
    except ValueError as error:
        raise CommandError(f"--store {url}: {error}") from error
    await watcher.start()
    try:
        await watcher.synced(timeout)
    except TimeoutError as error:
        reason = watcher.status.last_error or "no answer"
        await watcher.stop()
        raise CommandError(
            f"cannot load config from {url} within {timeout:g}s: {reason}"
        ) from error
    for problems in watcher.errors().values():
        for problem in problems:
            log.error("%s (not served)", problem)
    log.info(
        "loaded %d objects from %s at revision %d",
        len(store.objects()),
        url,
        watcher.status.revision,
    )
    return watcher


def _store_status(watcher: EtcdWatcher) -> Callable[[], dict[str, Any]]:
    def status() -> dict[str, Any]:
        now = watcher.status
        return {"url": str(watcher.url), **dataclasses.asdict(now)}

    return status


async def serve(settings: Settings, started: asyncio.Event | None = None) -> int:
    """Run the control plane until a signal (or `started`'s loop is stopped by the caller)."""
    store = ConfigStore()
    etcd: EtcdWatcher | None = None
    if settings.config is not None:
        refused = store.sync(settings.config)
        for problems in refused.values():
            for problem in problems:
                log.error("%s (not served)", problem)
        log.info(
            "loaded %d objects from %s (%d files refused)",
            len(store.objects()),
            settings.config,
            len(refused),
        )
    else:
        etcd = await _load_store(settings.store, store)
    cache = SnapshotCache()
    metrics = Metrics()
    workload_secrets = None
    if settings.ca_dir is not None:
        ca = _load_ca(settings.ca_dir)
        # Deterministic: replicas given the same CA serve the same certificates (see issue).
        workload_secrets = WorkloadSecrets(
            ca, ttl=timedelta(seconds=settings.cert_ttl), deterministic=ca.key_type == "ec"
        )
        log.info("workload CA %s (trust domain %s)", settings.ca_dir, ca.trust_domain)
    controller = Controller(
        cache,
        store,
        debounce=settings.debounce,
        max_delay=settings.max_delay,
        on_translated=metrics.observe_translation,
        on_pushed=metrics.expect,
        workload_secrets=workload_secrets,
    )
    metrics.inner = controller
    store_status = _store_status(etcd) if etcd is not None else None
    if store_status is not None:
        metrics.watch_store(store_status)
    credentials, authenticator = _xds_security(settings, workload_secrets)
    server = XdsServer(
        cache,
        callbacks=metrics,
        credentials=credentials,
        authenticator=authenticator,
        # Proxies reconnect now and then (+-10% jitter, 5 s grace), so load spreads over
        # replicas and workers that started later.
        max_connection_age=settings.max_connection_age or None,
        transport=settings.transport,
    )
    try:
        xds_port = await server.start(host_port(settings.xds_address))
    except Exception as error:  # grpc raises RuntimeError for a port in use
        raise CommandError(
            f"cannot serve xDS on {host_port(settings.xds_address)}: {error}"
        ) from error
    admin = AdminServer(controller, metrics, *settings.admin_address, store_status=store_status)
    try:
        admin.start()
    except OSError as error:
        await server.stop(0)
        raise CommandError(
            f"cannot serve admin on {host_port(settings.admin_address)}: {error}"
        ) from error
    controller.start()
    watcher = None
    if settings.config is not None:
        watcher = DirectoryWatcher(settings.config, store, controller.changed).start()
    else:
        assert etcd is not None
        etcd.on_change = controller.changed
    log.info(
        "serving xDS on %s:%d, admin on http://%s:%d",
        settings.xds_address[0],
        xds_port,
        settings.admin_address[0],
        admin.port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("stopping: draining streams (up to %.1fs)", settings.grace)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    if started is not None:
        started.set()
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.stop()
        if etcd is not None:
            await etcd.stop()
        controller.stop()
        await server.stop(settings.grace)
        admin.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
