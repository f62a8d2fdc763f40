"""Slowloris (issue 23 item 5): a real `inferd serve` closes connections whose request headers
do not complete within `header_timeout` (new ones, half-sent ones, and the next request on a
kept-alive one), refuses connections beyond `max_connections`, and serves normal requests
meanwhile."""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LiveServer

HEADER_TIMEOUT = 1.5
MAX_CONNECTIONS = 24
HALF_REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty"


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    live = LiveServer(
        env={
            "INFERD_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "INFERD_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        }
    )
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


def connect(server: LiveServer, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    if first:
        sock.sendall(first)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed `sock` (EOF or reset), or None if it stayed open."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass  # a response (there should be none) is read through to the close
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    finally:
        sock.close()
    return time.monotonic() - started


def close_times(socks: list[socket.socket], opened: float, limit: float) -> list[float | None]:
    """For each socket, seconds from `opened` until the server closed it (None: still open
    after `limit` seconds); watched all at once."""
    out: list[float | None] = [None] * len(socks)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    while sel.get_map() and time.monotonic() - opened < limit:
        for key, _ in sel.select(timeout=0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except ConnectionError:
                data = b""
            if not data:
                out[key.data] = time.monotonic() - opened
                sel.unregister(sock)
                sock.close()
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return out


def healthy(server: LiveServer) -> bool:
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=30,
    )
    return r.status_code == 200


def test_half_sent_and_silent_connections_are_closed(server: LiveServer) -> None:
    socks = [connect(server, HALF_REQUEST if i % 2 else b"") for i in range(20)]
    opened = time.monotonic()
    socks[1].sendall(b"pe: app")  # a trickle of header bytes does not keep one open
    times: list[float | None] = []
    watcher = threading.Thread(
        target=lambda: times.extend(close_times(socks, opened, HEADER_TIMEOUT + 10))
    )
    watcher.start()
    assert healthy(server)  # a normal request is served while they hang
    watcher.join()
    assert all(t is not None and HEADER_TIMEOUT - 0.2 < t < HEADER_TIMEOUT + 3 for t in times), (
        times
    )
    assert healthy(server)


def test_the_next_request_on_a_kept_alive_connection_is_bounded_too(server: LiveServer) -> None:
    sock = connect(server, b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sock.settimeout(5)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0")  # and never the rest
    assert closed_within(sock, HEADER_TIMEOUT + 5) is not None


def test_a_request_whose_body_takes_longer_than_the_header_timeout_is_served(
    server: LiveServer,
) -> None:
    # the bound is on headers only: the body has request_timeout, the response its own time
    body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    sock = connect(server, head)
    started = time.monotonic()
    for part in (body[:10], body[10:30], body[30:]):
        sock.sendall(part)
        time.sleep(HEADER_TIMEOUT / 2)
    sock.settimeout(120)
    response = b""
    while chunk := sock.recv(65536):
        response += chunk
    sock.close()
    assert time.monotonic() - started > HEADER_TIMEOUT
    assert response.startswith(b"HTTP/1.1 200"), response[:200]


def test_connections_beyond_the_cap_are_closed_at_once(server: LiveServer) -> None:
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    time.sleep(0.2)  # let the server accept them all
    extra = connect(server)
    wait = closed_within(extra, HEADER_TIMEOUT)
    assert wait is not None and wait < HEADER_TIMEOUT, wait
    for s in held:  # the held ones go at the header timeout, and then the server serves again
        assert closed_within(s, HEADER_TIMEOUT + 5) is not None
    assert healthy(server)
