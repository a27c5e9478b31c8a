"""The native transport's plain TCP: `PlainTransport` on real sockets, and `PlainListener`."""

from __future__ import annotations

import asyncio
import socket
import struct
import tracemalloc
from collections.abc import Callable

import pytest

from pilotfish.xds.tcp import HIGH_WATER, LOW_WATER, PlainListener, PlainTransport


class Recorder(asyncio.BufferedProtocol):
    """Records what a transport did to its protocol."""

    def __init__(self, keep_open_on_eof: bool = False) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.buffer = bytearray(4096)
        self.received = bytearray()
        self.calls: list[str] = []
        self.lost: list[Exception | None] = []
        self.keep_open_on_eof = keep_open_on_eof

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.calls.append("made")

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self.buffer[:nbytes]

    def eof_received(self) -> bool:
        self.calls.append("eof")
        return self.keep_open_on_eof

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")
        self.lost.append(exc)


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met")
        await asyncio.sleep(0.005)


def pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    theirs.setblocking(False)
    return ours, theirs


async def read_all(sock: socket.socket, size: int) -> bytes:
    loop, got = asyncio.get_running_loop(), bytearray()
    while len(got) < size:
        chunk = await loop.sock_recv(sock, 1 << 16)
        if not chunk:
            break
        got += chunk
    return bytes(got)


async def test_reads_go_to_the_protocols_buffer() -> None:
    ours, theirs = pair()
    protocol = Recorder()
    transport = PlainTransport(asyncio.get_running_loop(), ours, protocol)
    assert protocol.transport is transport and protocol.calls == ["made"]
    theirs.sendall(b"hello " * 1000)  # more than the protocol's buffer: several reads
    await until(lambda: len(protocol.received) == 6000)
    assert protocol.received == b"hello " * 1000
    assert transport.get_extra_info("socket") is ours
    assert transport.get_extra_info("ssl_object") is None
    transport.abort()
    theirs.close()


async def test_what_the_socket_does_not_take_is_buffered_with_backpressure() -> None:
    ours, theirs = pair()
    protocol = Recorder()
    transport = PlainTransport(asyncio.get_running_loop(), ours, protocol)
    body = bytes(range(256)) * 8192  # 2 MiB
    transport.write(body)
    assert transport.get_write_buffer_size() > HIGH_WATER
    assert protocol.calls == ["made", "pause"]
    transport.write(memoryview(b"-and-more"))  # queued behind the rest, in order
    received = await read_all(theirs, len(body) + 9)
    assert received == body + b"-and-more"
    await until(lambda: transport.get_write_buffer_size() == 0)
    assert protocol.calls == ["made", "pause", "resume"]
    assert transport.get_write_buffer_limits() == (LOW_WATER, HIGH_WATER)
    transport.close()
    await until(lambda: protocol.lost == [None])
    assert ours.fileno() == -1  # closed after connection_lost
    theirs.close()


async def test_writelines_sends_buffers_in_order_and_keeps_what_the_socket_did_not_take() -> None:
    ours, theirs = pair()
    protocol = Recorder()
    transport = PlainTransport(asyncio.get_running_loop(), ours, protocol)
    small: list[bytes | bytearray | memoryview] = [b"head:", memoryview(b"-view-"), bytearray(b"a")]
    transport.writelines(small)  # all taken at once: nothing buffered
    assert transport.get_write_buffer_size() == 0
    assert await read_all(theirs, 12) == b"head:-view-a"

    # A body the socket takes whole goes from its own buffer into the socket: not copied
    # into a joined one first (what a write per stream of a shared response body would cost).
    body = bytes(range(256)) * 128  # 32 KiB
    tracemalloc.start()
    try:
        transport.writelines([b"frame-head", body, b"nonce"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert transport.get_write_buffer_size() == 0
    assert peak < len(body) // 4
    assert await read_all(theirs, len(body) + 15) == b"frame-head" + body + b"nonce"

    # More than the socket takes: the socket stops inside one buffer, and the rest of it and
    # every buffer after it wait, in order, behind the pause.
    shared = bytes(range(256)) * 4096  # 1 MiB, as a response body shared by streams
    parts = [b"frame-head", shared, b"nonce", shared[:100], b"tail"]
    transport.writelines(parts)
    assert 0 < transport.get_write_buffer_size() < sum(map(len, parts))
    assert protocol.calls == ["made", "pause"]
    transport.writelines([b"-then-", b"more"])  # queued behind, not sent past the buffer
    expected = b"".join(parts) + b"-then-more"
    assert await read_all(theirs, len(expected)) == expected
    await until(lambda: transport.get_write_buffer_size() == 0)
    assert protocol.calls == ["made", "pause", "resume"]

    many = [bytes((i % 256,)) for i in range(3000)]  # more buffers than one sendmsg takes
    transport.writelines(iter(many))
    assert await read_all(theirs, 3000) == b"".join(many)
    transport.abort()
    transport.writelines([b"after"])  # nothing more once lost
    await until(lambda: protocol.lost == [None])
    theirs.close()


async def test_close_writes_what_is_buffered_first_and_abort_does_not() -> None:
    loop = asyncio.get_running_loop()
    body = b"x" * (1 << 21)
    ours, theirs = pair()
    protocol = Recorder()
    transport = PlainTransport(loop, ours, protocol)
    transport.write(body)
    transport.close()
    assert transport.is_closing() and protocol.lost == []  # the buffer goes out first
    transport.write(b"ignored?")  # still queued: asyncio writes while closing, too
    assert await read_all(theirs, len(body) + 8) == body + b"ignored?"
    await until(lambda: protocol.lost == [None])
    assert await loop.sock_recv(theirs, 10) == b""  # then the end of the stream
    theirs.close()

    ours, theirs = pair()
    protocol = Recorder()
    transport = PlainTransport(loop, ours, protocol)
    transport.write(body)
    transport.abort()
    transport.write(b"after")  # nothing more once lost
    await until(lambda: protocol.lost == [None])
    assert len(await read_all(theirs, len(body))) < len(body)
    theirs.close()


async def test_the_peers_end_of_stream_closes_unless_the_protocol_keeps_it_open() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = pair()
    protocol = Recorder()
    PlainTransport(loop, ours, protocol)
    theirs.shutdown(socket.SHUT_WR)
    await until(lambda: protocol.lost == [None])
    assert protocol.calls == ["made", "eof", "lost"]
    theirs.close()

    ours, theirs = pair()
    protocol = Recorder(keep_open_on_eof=True)
    transport = PlainTransport(loop, ours, protocol)
    theirs.shutdown(socket.SHUT_WR)
    await until(lambda: "eof" in protocol.calls)
    transport.write(b"still here")  # half-closed: we may still send
    assert await loop.sock_recv(theirs, 100) == b"still here"
    assert protocol.lost == []
    transport.close()
    await until(lambda: protocol.lost == [None])
    theirs.close()


async def test_a_reset_reaches_the_protocol_as_the_error() -> None:
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as server:
        theirs = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
    ours.setblocking(False)
    protocol = Recorder()
    PlainTransport(loop, ours, protocol)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()  # RST
    await until(lambda: bool(protocol.lost))
    assert isinstance(protocol.lost[0], ConnectionResetError)


async def test_a_listener_accepts_into_plain_transports() -> None:
    loop = asyncio.get_running_loop()
    made: list[Recorder] = []

    def factory() -> Recorder:
        made.append(Recorder())
        return made[-1]

    listener = PlainListener(loop, factory, "127.0.0.1", 0, reuse_port=True, backlog=16)
    (sock,) = listener.sockets
    port = sock.getsockname()[1]
    # SO_REUSEPORT: a second listener (a second worker process) binds the same port.
    twin = PlainListener(loop, factory, "127.0.0.1", port, reuse_port=True, backlog=16)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    await until(lambda: len(made) == 20)
    assert all(isinstance(r.transport, PlainTransport) for r in made)
    first = made[0].transport
    assert isinstance(first, PlainTransport)
    assert first.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert first.get_extra_info("peername")[0] == "127.0.0.1"
    listener.close()
    twin.close()
    await listener.wait_closed()
    assert listener.sockets == [] and sock.fileno() == -1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    for client in clients:
        client.close()
    for recorder in made:
        assert recorder.transport is not None
        recorder.transport.close()


async def test_every_interface_means_ipv4_and_ipv6_where_there_is_ipv6() -> None:
    loop = asyncio.get_running_loop()
    listener = PlainListener(loop, Recorder, None, 0, reuse_port=False, backlog=16)
    try:
        families = {sock.family for sock in listener.sockets}
        assert socket.AF_INET in families
        if socket.has_ipv6:
            for sock in listener.sockets:
                if sock.family == socket.AF_INET6:
                    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        listener.close()
