"""The ADS push benchmark's load generator starts its proxies as Envoys start: each on its own.

A fleet of Envoys connecting at once does not wait for one another: each sends its first
request as soon as its own connection is up. A generator that began every proxy's connect
before sending any first request kept the server idle for the first 7 ms of 100 proxies'
31 ms of initial convergence, and that wait was counted as the server's. Order, not time,
is checked here.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from bench import ads_proxies, h2client

PROXIES = 50


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    # Never accepts: the kernel completes the connects into its backlog, and nothing answers.
    sock = socket.create_server(("127.0.0.1", 0), backlog=PROXIES * 2)
    yield sock
    sock.close()


def test_a_proxy_sends_its_first_request_before_the_last_one_connects(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []
    real_connect = h2client._connect
    real_made = h2client.GrpcStream.connection_made

    async def connect(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
        steps.append("connect")
        return await real_connect(loop, host, port)

    def made(stream: h2client.GrpcStream, transport: asyncio.BaseTransport) -> None:
        real_made(stream, transport)  # writes the preface and the first request
        steps.append("sent")

    monkeypatch.setattr(h2client, "_connect", connect)
    monkeypatch.setattr(h2client.GrpcStream, "connection_made", made)
    monkeypatch.setattr(ads_proxies, "tune_for_serving", lambda: None)  # this process's GC
    ours, theirs = multiprocessing.Pipe()
    generator = threading.Thread(
        target=asyncio.run, args=(ads_proxies._clients(theirs, 0, PROXIES, 30.0, "h2", "sotw"),)
    )
    generator.start()
    try:
        assert ours.recv() == ("ready",)
        ours.send(("connect", listener.getsockname()[1]))
        assert ours.recv()[0] == "started"
        deadline = time.monotonic() + 30
        while steps.count("sent") < PROXIES and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        ours.send(("stop",))
        generator.join(30)
    assert steps.count("connect") == steps.count("sent") == PROXIES
    last_connect = len(steps) - 1 - steps[::-1].index("connect")
    assert steps.index("sent") < last_connect
