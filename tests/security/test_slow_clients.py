"""Slow clients hold no thread: the real server reads each request whole in its event loop
(``kgservice/httpworker.py``) and gives it to a thread only when it is complete.

Issue 9, item 3: eight connections sending their headers one byte a second stopped gunicorn's
``gthread`` worker answering anyone. Here 60 such connections (and slow bodies) run while
``/health`` and a normal ``/pathway`` are timed; then the deadlines (408), the size limits
(413, 431) and the framings a normal client uses (keep-alive, pipelining, chunked,
``Expect: 100-continue``) are checked on the same server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .conftest import vignette

pytestmark = pytest.mark.slow

SLOW = 60
HEADER_TIMEOUT_S = 4
BODY_TIMEOUT_S = 4
CASE = json.dumps(vignette("p08")).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from serverutil import RealServer

    env = {"ESI_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S), "ESI_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}
    with RealServer(tmp_path_factory.mktemp("slow") / "data", auth_required=False, reasoning_workers=1,
                    env=env) as running:
        yield running


def _connect(server: object) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)  # type: ignore[attr-defined]
    return sock


def _answer(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes (or ``timeout``)."""
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def _send_after_continue(sock: socket.socket, headers: bytes = b"") -> None:
    """POST the case with ``Expect: 100-continue``: its head, then (asserted) the server's 100
    Continue, then the body."""
    sock.sendall(b"POST /pathway HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                 + f"Content-Length: {len(CASE)}\r\n".encode() + headers + b"\r\n")
    sock.settimeout(5)
    interim = sock.recv(100)
    assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
    sock.sendall(CASE)


def _timed(server: object, method: str, path: str, body: bytes | None = None) -> tuple[int, float]:
    start = time.monotonic()
    reply = server.request(method, path, body, headers={"Content-Type": "application/json"},  # type: ignore[attr-defined]
                           timeout=10)
    return reply.status, time.monotonic() - start


def test_sixty_slow_clients_do_not_stop_health_or_pathway(server: object) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    stop = threading.Event()
    socks = [_connect(server) for _ in range(SLOW)]
    body_socks = [_connect(server) for _ in range(10)]
    sent = [0]

    def drip() -> None:  # one byte a second on every header connection, a byte a second of body on the others
        for sock in body_socks:
            sock.sendall(b"POST /pathway HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(CASE)}\r\n\r\n".encode())
        i = 0
        while not stop.is_set() and i < len(request) - 4:
            for sock in socks:
                try:
                    sock.send(request[i:i + 1])
                except OSError:
                    pass
            for sock in body_socks:
                try:
                    sock.send(CASE[i:i + 1])
                except OSError:
                    pass
            sent[0] = i = i + 1
            stop.wait(1.0)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        time.sleep(1.5)
        timings = []
        for _ in range(3):
            timings.append(_timed(server, "GET", "/health"))
            timings.append(_timed(server, "POST", "/pathway", CASE))
        assert all(status == 200 for status, _ in timings), timings
        assert max(elapsed for _, elapsed in timings) < 2.0, timings  # gthread: no answer at all
        assert sent[0] >= 1
    finally:
        stop.set()
        dripper.join(5)
        for sock in socks + body_socks:
            sock.close()


def test_headers_that_do_not_arrive_in_time_get_408(server: object) -> None:
    sock = _connect(server)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
        start = time.monotonic()
        raw = _answer(sock, timeout=HEADER_TIMEOUT_S + 5)
        assert _status(raw) == 408 and b"application/problem+json" in raw, raw[:300]
        assert time.monotonic() - start < HEADER_TIMEOUT_S + 2.5
    finally:
        sock.close()


def test_a_body_that_does_not_arrive_in_time_gets_408(server: object) -> None:
    sock = _connect(server)
    try:
        sock.sendall(b"POST /pathway HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
                     b"\r\n{")
        raw = _answer(sock, timeout=BODY_TIMEOUT_S + 5)
        assert _status(raw) == 408 and b"body" in raw, raw[:300]
    finally:
        sock.close()


def test_a_connection_that_sends_nothing_is_closed(server: object) -> None:
    sock = _connect(server)
    try:
        raw = _answer(sock, timeout=HEADER_TIMEOUT_S + 5)
        assert _status(raw) == 408, raw[:200]
    finally:
        sock.close()


@pytest.mark.parametrize("head,status", [
    (b"POST /pathway HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n", 413),
    (b"POST /pathway HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"F4240\r\n" + b"x" * 1_000_000
     + b"\r\n10\r\n", 413),
    (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 70_000, 431),
    (b"POST /pathway HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST /pathway HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST /pathway HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
], ids=["declared-too-large", "chunked-too-large", "headers-too-large", "two-lengths", "length-and-chunked",
        "bad-chunk-size"])
def test_oversized_or_ambiguous_requests_are_refused_before_a_thread_reads_them(server: object, head: bytes,
                                                                                status: int) -> None:
    sock = _connect(server)
    try:
        start = time.monotonic()
        try:
            sock.sendall(head)
        except OSError:
            pass  # the server may close before it has read everything: the answer is what counts
        raw = _answer(sock, timeout=5)
        assert _status(raw) == status, raw[:300]
        assert time.monotonic() - start < 2.5
    finally:
        sock.close()


def test_keep_alive_pipelining_chunked_and_100_continue_still_work(server: object) -> None:
    one = (b"POST /pathway HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           + f"Content-Length: {len(CASE)}\r\n\r\n".encode() + CASE)
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    sock = _connect(server)
    try:
        sock.sendall(one + health + one)  # three pipelined requests on one connection
        sock.settimeout(10)
        raw = b""
        deadline = time.monotonic() + 10
        while raw.count(b"HTTP/1.1 200") < 3 and time.monotonic() < deadline:
            raw += sock.recv(65536)
        assert raw.count(b"HTTP/1.1 200") == 3, raw[:500]
    finally:
        sock.close()

    parts = (CASE[:100], CASE[100:])
    chunked = b"".join(f"{len(part):X}\r\n".encode() + part + b"\r\n" for part in parts) + b"0\r\n\r\n"
    sock = _connect(server)
    try:
        sock.sendall(b"POST /pathway HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked)
        raw = _answer(sock)
        assert _status(raw) == 200 and b'"case": "p08"' in raw, raw[:300]
    finally:
        sock.close()

    sock = _connect(server)
    try:
        _send_after_continue(sock, b"Connection: close\r\n")
        raw = _answer(sock)
        assert b"HTTP/1.1 200" in raw and b'"case": "p08"' in raw, raw[:300]
        assert b"100 Continue" not in raw, raw[:300]  # one interim answer, not a second from gunicorn
    finally:
        sock.close()

    sock = _connect(server)  # the body sent with the head: no 100 Continue at all (it would come late)
    try:
        sock.sendall(b"POST /pathway HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n"
                     + f"Content-Length: {len(CASE)}\r\n\r\n".encode() + CASE)
        raw = _answer(sock)
        assert raw.startswith(b"HTTP/1.1 200") and b'"case": "p08"' in raw, raw[:300]
    finally:
        sock.close()


def _one_answer(sock: socket.socket, timeout: float = 10, skip_interim: bool = True) -> bytes:
    """One final response with a Content-Length body, from a kept-alive connection (1xx skipped,
    unless ``skip_interim`` is False: then a 1xx is what comes back, with the rest after it)."""
    sock.settimeout(timeout)
    raw = b""
    while True:
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(65536)
            if not chunk:
                return raw
            raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 1"):
            break
        if not skip_interim:
            return raw
        raw = body
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_kept_alive_connections_that_turn_slow_hold_no_thread(server: object) -> None:
    """The thread that answered a connection waits briefly for its next request (httpworker's
    linger); twenty connections whose second request then drips in a byte at a time must not
    hold the server's eight threads: /health and /pathway are answered meanwhile, and each slow
    request is answered once it is whole."""
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    socks = [_connect(server) for _ in range(20)]
    try:
        for sock in socks:
            sock.sendall(health)
            assert _status(_one_answer(sock)) == 200
        for i in range(len(health) - 1):  # every byte but the last, ~0.1 s apart
            for sock in socks:
                sock.send(health[i:i + 1])
            if i == 5:
                timings = [_timed(server, "GET", "/health"), _timed(server, "POST", "/pathway", CASE)]
                assert all(status == 200 for status, _ in timings), timings
                assert max(elapsed for _, elapsed in timings) < 2.0, timings
            time.sleep(0.1)
        for sock in socks:
            sock.send(health[-1:])
        assert all(_status(_one_answer(sock)) == 200 for sock in socks)
    finally:
        for sock in socks:
            sock.close()


def test_a_second_request_on_a_connection_is_read_as_carefully_as_the_first(server: object) -> None:
    """After an answer, the next request on the connection is answered right away, gets its
    100 Continue, and is refused when too large, exactly as a first one."""
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    sock = _connect(server)
    try:
        for _ in range(20):  # back to back, as a SPARQL client sends them
            sock.sendall(health)
            assert _status(_one_answer(sock)) == 200
        _send_after_continue(sock)
        raw = _one_answer(sock)
        assert _status(raw) == 200 and b'"case": "p08"' in raw, raw[:300]
        # the body with its head: the lingering thread takes it whole, and no late 100 Continue comes
        sock.sendall(b"POST /pathway HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\n" + f"Content-Length: {len(CASE)}\r\n\r\n".encode() + CASE)
        raw = _one_answer(sock, skip_interim=False)
        assert raw.startswith(b"HTTP/1.1 200") and b'"case": "p08"' in raw, raw[:300]
        sock.sendall(b"POST /pathway HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
        raw = _answer(sock, timeout=5)
        assert _status(raw) == 413 and b"application/problem+json" in raw, raw[:300]
    finally:
        sock.close()


def test_the_server_log_has_no_traceback(server: object) -> None:
    assert "Traceback" not in server.stderr()  # type: ignore[attr-defined]


def test_the_worker_in_use_is_the_buffering_one(server: object) -> None:
    assert "Using worker: kgservice.httpworker.BufferedThreadWorker" in server.stderr()  # type: ignore[attr-defined]
