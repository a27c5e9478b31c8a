"""`etcd://HOST:PORT[,HOST:PORT...]/PREFIX`: where the config lives, as one string for a flag."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "StoreURL"]

DEFAULT_PORT = 2379
DEFAULT_PREFIX = "pilotfish"

_SCHEME = "etcd://"
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class StoreURL:
    """The etcd members to talk to (`host:port`, in the order given) and the key prefix."""

    endpoints: tuple[str, ...]
    prefix: str = DEFAULT_PREFIX

    @classmethod
    def parse(cls, url: str) -> StoreURL:
        """Parse a store URL; the port defaults to 2379 and the prefix to `pilotfish`.

        Raises `ValueError` saying what is wrong: people type these by hand.
        """
        if not url.startswith(_SCHEME):
            raise ValueError(
                f"{url!r}: a store URL starts with {_SCHEME} (etcd://HOST:PORT/PREFIX)"
            )
        rest = url[len(_SCHEME) :]
        if "?" in rest or "#" in rest:
            raise ValueError(f"{url!r}: a store URL has no query or fragment")
        authority, _, path = rest.partition("/")
        if "@" in authority:
            raise ValueError(f"{url!r}: credentials in the URL are not supported")
        if not authority:
            raise ValueError(f"{url!r}: no etcd endpoint (etcd://HOST:PORT/PREFIX)")
        endpoints = tuple(_endpoint(url, part) for part in authority.split(","))
        if len(set(endpoints)) != len(endpoints):
            raise ValueError(f"{url!r}: an endpoint is listed twice")
        return cls(endpoints, _prefix(url, path))

    def __str__(self) -> str:
        return f"{_SCHEME}{','.join(self.endpoints)}/{self.prefix}"


def _endpoint(url: str, text: str) -> str:
    if text.startswith("["):  # [IPv6]:port
        host, bracket, port_text = text.partition("]")
        host += bracket
        if port_text and not port_text.startswith(":"):
            raise ValueError(f"{url!r}: bad endpoint {text!r}")
        port_text = port_text[1:]
    else:
        host, _, port_text = text.partition(":")
    if not _HOST.match(host):
        raise ValueError(f"{url!r}: bad host {host!r} in endpoint {text!r}")
    if not port_text:
        return f"{host}:{DEFAULT_PORT}"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{url!r}: bad port {port_text!r} in endpoint {text!r}")
    return f"{host}:{int(port_text)}"


def _prefix(url: str, path: str) -> str:
    path = path.strip("/")
    if not path:
        return DEFAULT_PREFIX
    for segment in path.split("/"):
        if not _SEGMENT.match(segment) or segment in (".", ".."):
            raise ValueError(
                f"{url!r}: bad prefix segment {segment!r} (letters, digits, '.', '_', '-')"
            )
    return path
