"""The xDS REST/JSON fetch API: `POST /v3/discovery:<type>` over a small asyncio HTTP/1.1 server.

xDS protocol, "REST-JSON polling subscriptions": the client POSTs a DiscoveryRequest in proto3
JSON and gets the DiscoveryResponse in proto3 JSON, or `304 Not Modified` when the version it
names is current. Envoy's REST mode polls like that every `refresh_delay`.

Each fetch is a one-request stream over the same `ConfigWatcher` contract (and the same
`Session`) as the gRPC streams, so any cache works and nothing is special-cased: the request
opens a watch, an answer given synchronously while the watch opens is the response, then the
watch is cancelled and the stream closed, so no watch or node status outlives the fetch.
Nothing is remembered between fetches (no nonce ties a request to an answer), which has two
consequences. A rejection cannot be seen: Envoy sends no error_detail, keeps naming the version
it holds and so fetches the rejected one again on each poll (its `update_rejected` counter
grows) until a good version replaces it. And a named subscription whose names change while
the type's version does not is answered 304; Envoy's REST subscriptions keep their names fixed.

REST is not the hot path: the JSON comes from the prepared (serialize-once) response bytes,
parsed back into a DiscoveryResponse. Every type inside an `Any` (HTTP filters, transport
sockets...) must be imported in this process for the JSON conversion to know it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import inspect
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import MappingProxyType
from typing import Any

from google.protobuf import descriptor_pool, json_format

from pilotfish.errors import RemoteProtocolError
from pilotfish.protos import RESOURCE_TYPES, DiscoveryRequest, DiscoveryResponse, Node
from pilotfish.xds.callbacks import Callbacks, HookResult
from pilotfish.xds.events import Sent
from pilotfish.xds.session import Session, new_stream_id
from pilotfish.xds.watch import ConfigWatcher

__all__ = ["REST_PATHS", "RestServer"]

_log = logging.getLogger(__name__)


_MAX_LINE = 64 * 1024
_MAX_HEADERS = 100
_MAX_BODY = 16 * 1024 * 1024
_IDLE_TIMEOUT = 60.0
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_CHUNK_SIZE = re.compile(r"[0-9A-Fa-f]{1,8}")
# gRPC status codes in error bodies, as grpc-gateway writes them (google.rpc.Status in JSON).
_CODES = {400: 3, 404: 5, 405: 12, 413: 8, 431: 8, 500: 13, 501: 12, 505: 12}


def _rest_paths() -> Mapping[str, str]:
    """Request path -> type URL, from the resource table and from the services' `google.api.http`
    annotations, which is where Envoy takes the path it POSTs to (they differ for ECDS)."""
    paths: dict[str, str] = {}
    pool = descriptor_pool.Default()
    # Typed loosely: the stubs cannot know which message this extension of MethodOptions holds.
    http_rule: Any = pool.FindExtensionByName("google.api.http")
    for row in RESOURCE_TYPES.values():
        if row.rest_path is None or row.service.fetch is None:
            continue
        paths[f"/v3/discovery:{row.rest_path}"] = row.type_url
        service, _, method = row.service.fetch.strip("/").rpartition("/")
        options = pool.FindServiceByName(service).methods_by_name[method].GetOptions()
        post: str = options.Extensions[http_rule].post
        if post:
            paths[post] = row.type_url
    return MappingProxyType(paths)


REST_PATHS: Mapping[str, str] = _rest_paths()
"""The fetch paths served (`/v3/discovery:clusters`, ...), each with its type URL."""


class _HttpError(Exception):
    """A request the server answers with an error status (and closes the connection after,
    when `close`: the framing of what follows can no longer be trusted)."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        *,
        close: bool = False,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = headers

    def response(self) -> _Response:
        body = json.dumps({"code": _CODES.get(self.status, 2), "message": self.message})
        return _Response(self.status, body.encode(), headers=self.headers, close=self.close)


@dataclass(slots=True)
class _Request:
    method: str
    target: str
    minor_version: int
    headers: dict[str, str]
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.minor_version >= 1:
            return "close" not in tokens
        return "keep-alive" in tokens


@dataclass(slots=True)
class _Response:
    status: HTTPStatus
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False


class RestServer:
    """The xDS REST/JSON fetch API over HTTP/1.1, backed by any `ConfigWatcher`.

    `callbacks` see each fetch as a one-request stream: `on_stream_open`, `on_stream_request`,
    `on_stream_response` (only when a 200 answer goes out) and `on_stream_close`.
    """

    def __init__(
        self,
        watcher: ConfigWatcher,
        *,
        callbacks: Callbacks | None = None,
        max_body: int = _MAX_BODY,
        idle_timeout: float = _IDLE_TIMEOUT,
    ) -> None:
        self._watcher = watcher
        self._callbacks = callbacks
        self._max_body = max_body
        self._idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._host = "127.0.0.1"
        self.port = 0

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) clients connect to, once started (`envoy_bootstrap`'s REST address)."""
        return self._host, self.port

    @property
    def connection_count(self) -> int:
        """HTTP connections open now."""
        return len(self._connections)

    async def __aenter__(self) -> RestServer:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self, address: str = "127.0.0.1:0") -> int:
        """Listen on `address` (`host:port`, port 0 picks a free one); returns the bound port."""
        if self._server is not None:
            raise RuntimeError("RestServer already started")
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        self._server = await asyncio.start_server(
            self._serve_connection, host or None, int(port), limit=_MAX_LINE
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._host = host or "127.0.0.1"
        _log.info("xDS REST server listening on %s (port %d)", address, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every connection (a fetch in progress is abandoned)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    # HTTP/1.1

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                try:
                    async with asyncio.timeout(self._idle_timeout):
                        request = await _read_request(reader, writer, self._max_body)
                except TimeoutError:
                    break
                except _HttpError as error:
                    await _write(writer, error.response(), keep_alive=False, head=False)
                    break
                if request is None:
                    break
                response = await self._handle(request)
                keep_alive = request.keep_alive and not response.close
                await _write(writer, response, keep_alive=keep_alive, head=request.method == "HEAD")
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except asyncio.CancelledError:
            # stop() ends connections by cancelling them; end quietly, as asyncio's stream
            # callback reports a cancelled connection task as an error (Python 3.11).
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _handle(self, request: _Request) -> _Response:
        try:
            type_url = REST_PATHS.get(_path_of(request.target))
            if type_url is None:
                raise _HttpError(HTTPStatus.NOT_FOUND, f"no xDS fetch API at {request.target}")
            if request.method != "POST":
                raise _HttpError(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    f"{request.method} is not allowed: POST a DiscoveryRequest",
                    headers=(("Allow", "POST"),),
                )
            return await self._fetch(type_url, _discovery_request(request.body, type_url))
        except _HttpError as error:
            return error.response()
        except Exception:
            _log.exception("REST %s %s failed", request.method, request.target)
            return _HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error").response()

    # xDS

    async def _fetch(self, type_url: str, request: DiscoveryRequest) -> _Response:
        stream_id = new_stream_id()
        callbacks = self._callbacks
        node: Node | None = request.node if request.HasField("node") else None
        if callbacks is not None:
            await _run(callbacks.on_stream_open(stream_id, type_url))
        try:
            if callbacks is not None:
                await _run(callbacks.on_stream_request(stream_id, request))
            answer = self._answer(stream_id, type_url, request)
            if answer is None:
                return _Response(HTTPStatus.NOT_MODIFIED)
            data, sent = answer
            try:
                body = json_format.MessageToJson(DiscoveryResponse.FromString(data), indent=None)
            except (json_format.Error, TypeError) as error:
                raise _HttpError(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    f"cannot write the {type_url} response as JSON: {error}",
                ) from error
            if callbacks is not None:
                await _run(callbacks.on_stream_response(stream_id, request.node, sent))
            _log.debug("REST fetch %d: %s version %s", stream_id, type_url, sent.version)
            return _Response(HTTPStatus.OK, body.encode())
        finally:
            if callbacks is not None:
                await _run(callbacks.on_stream_close(stream_id, node))

    def _answer(
        self, stream_id: int, type_url: str, request: DiscoveryRequest
    ) -> tuple[bytes, Sent] | None:
        """Open a watch for `request`, take what the watcher answers while it opens, close.

        Only an answer given synchronously counts; one arriving later (another thread setting
        a snapshot) is dropped: the client's next poll gets it. The watcher hears `Subscribed`,
        `Sent` (for a 200) and the close; never `Acked`: a REST request carries no nonce, so
        it acknowledges no response, and counting each poll as an ACK would make ACK counts
        count polls. The version the client holds is in the watch (`known_version`).
        """
        owner = threading.get_ident()
        opening = True

        def dispatch(deliver: Callable[[], None]) -> None:
            if opening and threading.get_ident() == owner:
                deliver()

        session = Session(self._watcher, stream_id, type_url, dispatch=dispatch)
        try:
            try:
                # First request of the stream with version_info set: the watch knows that
                # version and the requested names, so a current client gets no answer.
                session.receive(request)
            except RemoteProtocolError as error:
                raise _HttpError(HTTPStatus.BAD_REQUEST, str(error)) from error
            finally:
                opening = False
            return session.next_response()
        finally:
            session.close()


def _discovery_request(body: bytes, type_url: str) -> DiscoveryRequest:
    """Parse a proto3-JSON DiscoveryRequest posted to the path of `type_url`.

    Unknown fields are ignored, as in binary protobuf: a newer client's node may carry fields
    this build does not know.
    """
    try:
        document = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as error:
        raise _HttpError(HTTPStatus.BAD_REQUEST, f"body is not UTF-8: {error}") from error
    except ValueError as error:
        raise _HttpError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {error}") from error
    if not isinstance(document, dict):
        raise _HttpError(
            HTTPStatus.BAD_REQUEST, "body must be a JSON object (a DiscoveryRequest in proto3 JSON)"
        )
    request = DiscoveryRequest()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST, f"body is not a DiscoveryRequest: {error}"
        ) from error
    if request.type_url and request.type_url != type_url:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST,
            f"a request for {request.type_url} posted to the fetch API of {type_url}",
        )
    request.type_url = type_url
    return request


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document: dict[str, object] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"duplicate key {key!r}")
        document[key] = value
    return document


def _path_of(target: str) -> str:
    if "://" in target:  # absolute-form (what a client talking through a proxy sends)
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    return target.partition("?")[0].partition("#")[0]


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """One line without its CRLF (a bare LF is accepted); None at end of stream."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        return None  # closed, perhaps in the middle of a line: nothing to answer
    except asyncio.LimitOverrunError as error:
        raise _HttpError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"line longer than {_MAX_LINE} bytes",
            close=True,
        ) from error
    return line[:-2] if line.endswith(b"\r\n") else line[:-1]


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_body: int
) -> _Request | None:
    """Read one request (line, headers, body); None when the client closed between requests."""
    line = await _read_line(reader)
    for _ in range(4):  # RFC 9112 2.2: ignore empty lines before a request-line
        if line != b"":
            break
        line = await _read_line(reader)
    if line is None:
        return None
    parts = line.decode("latin-1").split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed request line", close=True)
    method, target, version = parts
    matched = _VERSION.fullmatch(version)
    if matched is None:
        raise _HttpError(HTTPStatus.BAD_REQUEST, f"bad HTTP version {version!r}", close=True)
    if matched[1] != "1":
        raise _HttpError(
            HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
            f"{version} is not supported: the xDS REST API speaks HTTP/1.1",
            close=True,
        )
    request = _Request(method, target, int(matched[2]), await _read_headers(reader))
    request.body = await _read_body(reader, writer, request, max_body)
    return request


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS + 1):
        line = await _read_line(reader)
        if line is None:
            raise asyncio.IncompleteReadError(b"", None)
        if not line:
            return headers
        if line[:1] in (b" ", b"\t"):
            raise _HttpError(HTTPStatus.BAD_REQUEST, "folded header lines", close=True)
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"malformed header {name!r}", close=True)
        name, value = name.lower(), value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    raise _HttpError(
        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"more than {_MAX_HEADERS} headers", close=True
    )


async def _read_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: _Request, max_body: int
) -> bytes:
    headers = request.headers
    encoding = headers.get("transfer-encoding")
    length = headers.get("content-length")
    if encoding is not None and length is not None:
        # Two framings disagreeing is how requests are smuggled: refuse (RFC 9112 6.1).
        raise _HttpError(
            HTTPStatus.BAD_REQUEST, "both Transfer-Encoding and Content-Length", close=True
        )
    chunked = False
    size = 0
    if encoding is not None:
        if [c.strip().lower() for c in encoding.split(",")] != ["chunked"]:
            raise _HttpError(
                HTTPStatus.NOT_IMPLEMENTED,
                f"transfer coding {encoding!r} (only chunked is supported)",
                close=True,
            )
        chunked = True
    elif length is not None:
        values = {v.strip() for v in length.split(",")}
        text = values.pop() if len(values) == 1 else ""
        if not text.isdigit() or not text.isascii():
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length!r}", close=True)
        size = int(text)
        if size > max_body:
            raise _HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {max_body} bytes", close=True
            )
    if (chunked or size) and headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    if not chunked:
        return await reader.readexactly(size) if size else b""
    return await _read_chunked(reader, max_body)


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = await _read_line(reader)
        if line is None:
            raise asyncio.IncompleteReadError(b"", None)
        text = line.decode("latin-1").partition(";")[0].strip()
        if not _CHUNK_SIZE.fullmatch(text):
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"bad chunk size {text!r}", close=True)
        size = int(text, 16)
        if size == 0:
            break
        total += size
        if total > max_body:
            raise _HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {max_body} bytes", close=True
            )
        parts.append(await reader.readexactly(size))
        if await _read_line(reader) != b"":
            raise _HttpError(HTTPStatus.BAD_REQUEST, "chunk not followed by CRLF", close=True)
    await _read_headers(reader)  # trailer fields: read and ignored
    return b"".join(parts)


async def _write(
    writer: asyncio.StreamWriter, response: _Response, *, keep_alive: bool, head: bool
) -> None:
    status = response.status
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        "Server: pilotfish",
    ]
    if status != HTTPStatus.NOT_MODIFIED:  # a 304 has no body, and no length of one
        lines.append(f"Content-Type: {response.content_type}")
        lines.append(f"Content-Length: {len(response.body)}")
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    send_body = not head and status != HTTPStatus.NOT_MODIFIED
    writer.write(head_bytes + response.body if send_body else head_bytes)
    await writer.drain()


async def _run(result: HookResult) -> None:
    if result is not None and inspect.isawaitable(result):
        await result
