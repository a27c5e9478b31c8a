"""Plain TCP for the native transport: listening sockets and a lean `asyncio.Transport`.

Why not `loop.create_server`: asyncio accepts each connection in a task of its own and gives it a
general-purpose transport (a dict of extras, peer and socket names read up front, a weak
registry entry): about 20 us and 0.7 KB of RSS per connection, measured. A fleet of proxies
connecting at once pays that a thousand times over, for features an xDS connection never uses.
Here a connection costs one `accept`, one small slotted transport and the event loop's reader
registration, and reads and writes go straight to the socket. TLS connections keep asyncio's
transports.

The transport does what `pilotfish.xds.native` needs of one: buffered-protocol reads into the
protocol's buffer, writes (and vectored `writelines`, one ``sendmsg``, so a shared response
body is not copied into a joined buffer first) that go out at once and buffer only what the
socket does not take
(with the protocol paused above `HIGH_WATER` buffered bytes and resumed at `LOW_WATER`),
`close` after the buffer is out, `abort` at once. The end of the stream from the peer closes it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["HIGH_WATER", "LOW_WATER", "PlainListener", "PlainTransport"]

_log = logging.getLogger(__name__)

HIGH_WATER = 64 * 1024
"""Buffered bytes above which the protocol is asked to pause writing (asyncio's default)."""
LOW_WATER = 16 * 1024
"""Buffered bytes at or below which a paused protocol resumes (asyncio's default)."""
_ACCEPT_RETRY = 1.0
"""Seconds listening pauses when the process is out of file descriptors or memory."""
_NO_EXTRA: dict[str, Any] = {}
_IOV_MAX = 1024
"""Buffers one ``sendmsg`` takes on Linux; more are joined and sent as one."""


class PlainTransport(asyncio.Transport):
    """One accepted TCP connection driving an `asyncio.BufferedProtocol`."""

    __slots__ = (
        "_buffer",
        "_closing",
        "_fd",
        "_loop",
        "_lost",
        "_paused",
        "_protocol",
        "_sock",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BufferedProtocol,
    ) -> None:
        super().__init__(_NO_EXTRA)
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol: asyncio.BufferedProtocol = protocol
        self._buffer: bytearray | None = None  # what the socket did not take yet
        self._closing = False
        self._lost = False  # connection_lost is scheduled or done: nothing more happens
        self._paused = False  # the protocol was asked to pause writing
        protocol.connection_made(self)
        if not self._closing:
            loop.add_reader(self._fd, self._read_ready)

    # -- reading -------------------------------------------------------------------------------

    def _read_ready(self) -> None:
        if self._lost:
            return
        protocol = self._protocol
        try:
            nbytes = self._sock.recv_into(protocol.get_buffer(-1))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:  # reset by the peer, and the like
            self._force_close(error)
            return
        if not nbytes:  # the peer is done sending
            try:
                keep_open = protocol.eof_received()
            except Exception as error:
                _log.exception("fatal error in the protocol of a connection")
                self._force_close(error)
                return
            if keep_open:
                self._loop.remove_reader(self._fd)
            else:
                self.close()
            return
        try:
            protocol.buffer_updated(nbytes)
        except Exception as error:
            _log.exception("fatal error in the protocol of a connection")
            self._force_close(error)

    # -- writing -------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._lost or not data:
            return
        if self._buffer:
            self._buffer += data
            self._check_high_water(self._buffer)
            return
        sent = self._send(self._sock.send, data)
        if sent is not None and sent < len(data):
            with memoryview(data) as view:
                self._keep((view[sent:],))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write the buffers in order with one vectored send (``sendmsg``): a large shared
        buffer among them goes into the socket without being copied into a joined one first."""
        parts = list_of_data if isinstance(list_of_data, list) else list(list_of_data)
        if self._lost or not parts:
            return
        if self._buffer or len(parts) > _IOV_MAX:
            self.write(b"".join(parts))
            return
        sent = self._send(self._sock.sendmsg, parts)
        if sent is None:
            return
        rest: list[memoryview] = []
        for part in parts:
            size = len(part)
            if sent >= size:
                sent -= size
                continue
            view = memoryview(part)
            rest.append(view[sent:] if sent else view)
            sent = 0
        if rest:
            self._keep(rest)

    def _send(self, send: Callable[[Any], int], data: Any) -> int | None:
        # What the socket took of `data` (0 if it would block); None: an error closed it.
        try:
            return send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            self._force_close(error)
            return None

    def _keep(self, rest: Iterable[memoryview]) -> None:
        # What the socket did not take: buffered, written when it is writable again.
        self._loop.add_writer(self._fd, self._write_ready)
        buffer = self._buffer = bytearray()
        for view in rest:
            buffer += view
        self._check_high_water(buffer)

    def _check_high_water(self, buffer: bytearray) -> None:
        if not self._paused and len(buffer) > HIGH_WATER:
            self._paused = True
            self._call(self._protocol.pause_writing)

    def _write_ready(self) -> None:
        buffer = self._buffer
        if self._lost or not buffer:
            return
        sent = self._send(self._sock.send, buffer)
        if not sent:
            return
        del buffer[:sent]
        if self._paused and len(buffer) <= LOW_WATER:
            self._paused = False
            self._call(self._protocol.resume_writing)  # may write more
        if not buffer:
            self._loop.remove_writer(self._fd)
            self._buffer = None  # an idle connection holds no buffer
            if self._closing:
                self._connection_lost(None)

    def get_write_buffer_size(self) -> int:
        return len(self._buffer) if self._buffer else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return LOW_WATER, HIGH_WATER

    def can_write_eof(self) -> bool:
        return False

    # -- closing -------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; close once what is buffered is written."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self._buffer:
            self._connection_lost(None)

    def abort(self) -> None:
        """Close now, dropping what is buffered."""
        self._force_close(None)

    def _force_close(self, error: Exception | None) -> None:
        if self._lost:
            return
        if self._buffer:
            self._buffer = None
            self._loop.remove_writer(self._fd)
        if not self._closing:
            self._closing = True
            self._loop.remove_reader(self._fd)
        self._connection_lost(error)

    def _connection_lost(self, error: Exception | None) -> None:
        # Soon, not now: the protocol may be in the middle of a call that closed it.
        self._lost = True
        self._loop.call_soon(self._finish, error)

    def _finish(self, error: Exception | None) -> None:
        try:
            self._protocol.connection_lost(error)
        finally:
            self._sock.close()

    def _call(self, method: Callable[[], None]) -> None:
        try:
            method()
        except Exception:
            _log.exception("the protocol of a connection failed to pause or resume writing")

    # -- the rest of the interface -------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``socket``, ``peername`` and ``sockname``; anything else (``ssl_object``): default."""
        if name == "socket":
            return self._sock
        try:
            if name == "peername":
                return self._sock.getpeername()
            if name == "sockname":
                return self._sock.getsockname()
        except OSError:
            return default
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.BufferedProtocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class PlainListener:
    """Listening sockets accepting into `PlainTransport`s; `factory` makes each protocol.

    Bound as `loop.create_server` binds them: every address `host` resolves to (None: every
    interface), IPv6 sockets IPv6 only, with SO_REUSEADDR, and SO_REUSEPORT if `reuse_port`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], asyncio.BufferedProtocol],
        host: str | None,
        port: int,
        *,
        reuse_port: bool,
        backlog: int,
    ) -> None:
        self._loop = loop
        self._factory = factory
        self._backlog = backlog
        self.sockets: list[socket.socket] = []
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(backlog)
                sock.setblocking(False)
        except BaseException:
            self.close()
            raise
        for sock in self.sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(self._backlog):
            try:
                sock, _ = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                if error.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                # Out of descriptors or memory: stop accepting a moment, as asyncio does.
                _log.error("cannot accept a connection, retrying in %gs: %s", _ACCEPT_RETRY, error)
                fd = listening.fileno()
                self._loop.remove_reader(fd)
                self._loop.call_later(_ACCEPT_RETRY, self._resume, listening)
                return
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                PlainTransport(self._loop, sock, self._factory())
            except Exception:
                _log.exception("cannot serve an accepted connection")
                sock.close()

    def _resume(self, listening: socket.socket) -> None:
        if listening.fileno() >= 0:
            self._loop.add_reader(listening.fileno(), self._accept, listening)

    def close(self) -> None:
        """Stop listening (connections already accepted go on)."""
        sockets, self.sockets = self.sockets, []
        for sock in sockets:
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        """As `asyncio.Server.wait_closed`: nothing to wait for once closed."""
