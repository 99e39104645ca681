"""A gunicorn worker that reads each request whole before a thread sees it.

gunicorn's ``gthread`` worker hands a connection to a thread as soon as its first byte
arrives, and the thread then blocks reading the rest: eight clients that send their headers
a byte a second hold eight threads, and nobody else is answered. Here the worker's event
loop reads every request itself, without blocking, into a buffer (as a reverse proxy with
request buffering does), and gives it to a thread only when the headers and the whole body
are in. A slow client costs a buffer and a file descriptor, never a thread, and it has
``header_timeout_s`` for its headers and ``body_timeout_s`` for its body: past that it gets
``408`` and is closed. A declared or streamed body over ``max_body_bytes`` gets ``413``, a
header section over 64 KiB ``431``, before a thread is involved.

Only the framing is read here (where the headers end, Content-Length, chunked encoding);
gunicorn's own parser then parses the buffered request as usual, and refuses what it refuses.

A kept-alive connection's next request usually follows its answer within a millisecond. So
the thread that answered waits for it up to ``LINGER_S`` and, when it arrives whole in that
time, answers it too (the same framing checks, without blocking): the request skips the event
loop and two thread hand-offs, which cost more than a small SPARQL query (1-2 ms under load).
Anything else (nothing came, part of a request, a request the framing refuses) goes back to
the event loop as before, so a slow client holds a thread for ``LINGER_S`` at most; and at
most ``threads - 1`` threads wait at once, so one is always left for the loop's requests.
"""

from __future__ import annotations

import errno
import json
import select
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

HEADER_LIMIT = 64 * 1024
#: How long the thread that answered a kept-alive connection waits for its next request.
LINGER_S = 0.02
#: What all connections still being read may hold together; past it a client gets 503.
MIN_BUFFER_BUDGET = 64 * 1024 * 1024


class _Refuse(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


class _ToTheLoop(Exception):
    """A lingering thread leaves this request to the event loop (which answers 100-continue)."""


@dataclass
class _Incoming:
    """A request being read: its bytes so far and what is known of its framing."""

    conn: Any
    deadline: float
    buffer: bytearray = field(default_factory=bytearray)
    scanned: int = 0  # how far the search for the end of the headers has looked
    body_start: int | None = None  # where the body begins, once the headers are in
    length: int | None = None  # Content-Length, or None for chunked
    chunk_at: int = 0  # chunked: where the next chunk's size line starts
    chunked_total: int = 0
    may_continue: bool = True  # may answer Expect: 100-continue (the event loop does, a lingering thread not)
    expects: bool = False  # its head has Expect: 100-continue (answered here, or moot: the body is in)


def _framing(head: bytes) -> tuple[int | None, bool, bool]:
    """(Content-Length or None when chunked, chunked, expects 100-continue) of a header section;
    refuses framing that two parsers could read differently."""
    lengths, codings, expect = set(), [], False
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue  # gunicorn's parser refuses a malformed field; only framing matters here
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            lengths.add(value)
        elif name == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",")]
        elif name == b"expect":
            expect = value.lower() == b"100-continue"
    if codings:
        if lengths or codings[-1] != b"chunked":
            raise _Refuse(400, "Bad Request", "Transfer-Encoding must end in chunked and come without Content-Length")
        return None, True, expect
    if len(lengths) > 1 or (lengths and not next(iter(lengths)).isdigit()):
        raise _Refuse(400, "Bad Request", "Content-Length must be one decimal number")
    return (int(next(iter(lengths))) if lengths else 0), False, expect


def _unread(incoming: _Incoming, whole: bool) -> None:
    """Give what was read back to gunicorn's parser; a whole request without its Expect field."""
    data = bytes(incoming.buffer)
    if whole and incoming.expects and incoming.body_start is not None:
        data = _without_expect(data, incoming.body_start)
    incoming.conn.parser.unreader.unread(data)


def _without_expect(request: bytes, body_start: int) -> bytes:
    """``request`` without the ``Expect: 100-continue`` field of its head (the head ends at
    ``body_start``). This worker has answered it already, or the body came with the head; left
    in, gunicorn would send a second ``100 Continue`` (a late one, before the final answer).

    >>> _without_expect(b"POST / HTTP/1.1\\r\\nExpect: 100-Continue\\r\\nHost: x\\r\\n\\r\\nbody", 46)
    b'POST / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\nbody'
    """
    lines = request[:body_start - 4].split(b"\r\n")
    kept = [lines[0]] + [line for line in lines[1:] if not _is_expect_continue(line)]
    return b"\r\n".join(kept) + request[body_start - 4:]


def _is_expect_continue(line: bytes) -> bool:
    name, _, value = line.partition(b":")
    return name.strip().lower() == b"expect" and value.strip().lower() == b"100-continue"


class BufferedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """``gthread`` with request buffering in the event loop; see the module's docstring."""

    def init_process(self) -> None:
        settings = getattr(self.app, "settings", None)
        self.header_timeout = float(getattr(settings, "header_timeout_s", 10.0))
        self.body_timeout = float(getattr(settings, "body_timeout_s", 30.0))
        self.max_body = int(getattr(settings, "max_body_bytes", 1_000_000))
        self.budget = max(MIN_BUFFER_BUDGET, 8 * self.max_body)
        self.buffered = 0
        self.incoming: dict[int, _Incoming] = {}
        self.lingering = 0
        self.linger_lock = threading.Lock()
        super().init_process()

    # -- in a thread: a kept-alive connection's next request, read without the event loop ------------

    def handle(self, conn: Any) -> Any:
        conn.esi_complete = False  # taken: whatever gunicorn queues next on it is read by the loop first
        result = super().handle(conn)
        while result is True and self.alive and self._linger(conn):
            result = super().handle(conn)
        return result

    def _linger(self, conn: Any) -> bool:
        """Wait up to ``LINGER_S`` for the connection's next request. True: it is in the parser's
        buffer, whole, for this thread. False: whatever came is back in that buffer, and gunicorn
        gives the connection to the event loop (or closes it, if the client went away)."""
        with self.linger_lock:
            if self.lingering >= self.cfg.threads - 1:
                return False
            self.lingering += 1
        try:
            incoming = _Incoming(conn, time.monotonic() + LINGER_S, bytearray(conn.parser.unreader.take_buffered()),
                                 may_continue=False)
            whole = self._read_ahead(incoming)
            _unread(incoming, whole)
            return whole
        finally:
            with self.linger_lock:
                self.lingering -= 1

    def _read_ahead(self, incoming: _Incoming) -> bool:
        until = incoming.deadline  # _complete moves incoming.deadline on to the body's timeout
        poll = select.poll()
        poll.register(incoming.conn.sock.fileno(), select.POLLIN)
        while True:
            try:
                if incoming.buffer and self._complete(incoming):
                    return True
            except (_Refuse, _ToTheLoop):
                return False  # the event loop reads it again, and refuses it there
            left = until - time.monotonic()
            if left <= 0 or not poll.poll(left * 1000):
                return False
            try:
                data = incoming.conn.sock.recv(256 * 1024, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return False
            if not data or len(incoming.buffer) + len(data) > self.max_body + HEADER_LIMIT:
                incoming.buffer += data
                return False
            incoming.buffer += data

    # -- the way in: every request (new, kept alive, pipelined) comes through here -------------------

    def enqueue_req(self, conn: Any) -> None:
        if getattr(conn, "esi_complete", False) or self.cfg.is_ssl:
            conn.esi_complete = False
            super().enqueue_req(conn)
            return
        held = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        incoming = _Incoming(conn, time.monotonic() + self.header_timeout, bytearray(held))
        conn.sock.setblocking(False)
        self.buffered += len(held)
        self.incoming[id(conn)] = incoming
        if not self._advance(incoming, registered=False):
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, incoming))

    def _readable(self, incoming: _Incoming, sock: Any) -> None:
        try:
            data = sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._drop(incoming)
            return
        if self.buffered + len(data) > self.budget:
            self._refuse(incoming, _Refuse(503, "Service Unavailable", "too many requests are being received at "
                                                                       "once; try again"), registered=True)
            return
        incoming.buffer += data
        self.buffered += len(data)
        self._advance(incoming, registered=True)

    def _advance(self, incoming: _Incoming, registered: bool) -> bool:
        """Read what the buffer says; hand the request over or refuse it. True when it left the loop."""
        held = len(incoming.buffer)
        try:
            try:
                done = self._complete(incoming)
            finally:
                self.buffered -= held - len(incoming.buffer)  # the empty lines it dropped
        except _Refuse as refusal:
            self._refuse(incoming, refusal, registered)
            return True
        if done:
            if registered:
                self.poller.unregister(incoming.conn.sock)
            self._hand_over(incoming)
        return done

    def _complete(self, incoming: _Incoming) -> bool:
        buf = incoming.buffer
        if incoming.body_start is None:
            while buf.startswith(b"\r\n"):  # empty lines before a request are ignored (RFC 9112 2.2)
                del buf[:2]
                incoming.scanned = 0
            end = buf.find(b"\r\n\r\n", max(0, incoming.scanned - 3))  # each byte looked at once
            incoming.scanned = len(buf)
            if (end < 0 and len(buf) > HEADER_LIMIT) or end > HEADER_LIMIT:
                raise _Refuse(431, "Request Header Fields Too Large", f"the header section is over {HEADER_LIMIT} "
                                                                      "bytes")
            if end < 0:
                return False
            length, _, expect = _framing(bytes(buf[:end]))
            if length is not None and length > self.max_body:
                raise _Refuse(413, "Payload Too Large", f"the body may be at most {self.max_body} bytes")
            incoming.body_start = incoming.chunk_at = end + 4
            incoming.length, incoming.expects = length, expect
            incoming.deadline = time.monotonic() + self.body_timeout
            done = self._body_done(incoming)
            if expect and not done and not incoming.may_continue:
                raise _ToTheLoop()
            if expect and not done and buf[:buf.find(b"\r\n")].endswith(b" HTTP/1.1"):
                self._send(incoming.conn.sock, b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it
            return done
        return self._body_done(incoming)

    def _body_done(self, incoming: _Incoming) -> bool:
        if incoming.length is not None:
            assert incoming.body_start is not None
            return len(incoming.buffer) >= incoming.body_start + incoming.length
        return self._chunks_done(incoming)

    def _chunks_done(self, incoming: _Incoming) -> bool:
        buf = incoming.buffer
        while True:
            line_end = buf.find(b"\r\n", incoming.chunk_at)
            if line_end < 0:
                return False
            size_text = bytes(buf[incoming.chunk_at:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _Refuse(400, "Bad Request", "a chunk size is not a hexadecimal number") from None
            if size == 0:  # the last chunk, then trailer fields and an empty line
                if buf[line_end + 2:line_end + 4] == b"\r\n":
                    return True
                return buf.find(b"\r\n\r\n", line_end) >= 0
            if incoming.chunked_total + size > self.max_body:
                raise _Refuse(413, "Payload Too Large", f"the body may be at most {self.max_body} bytes")
            chunk_end = line_end + 2 + size
            if len(buf) < chunk_end + 2:
                return False
            if buf[chunk_end:chunk_end + 2] != b"\r\n":
                raise _Refuse(400, "Bad Request", "a chunk does not end where its size says")
            incoming.chunked_total += size
            incoming.chunk_at = chunk_end + 2

    # -- the way out -------------------------------------------------------------------------------

    def _hand_over(self, incoming: _Incoming) -> None:
        conn = self._forget(incoming)
        conn.sock.setblocking(True)
        conn.init()
        _unread(incoming, whole=True)
        conn.data_ready = True
        conn.esi_complete = True
        super().enqueue_req(conn)

    def _refuse(self, incoming: _Incoming, refusal: _Refuse, registered: bool) -> None:
        body = json.dumps({"type": f"https://w3id.org/esi-kg/problems/{refusal.reason.lower().replace(' ', '-')}",
                           "title": refusal.reason, "status": refusal.status, "detail": refusal.detail}).encode()
        head = (f"HTTP/1.1 {refusal.status} {refusal.reason}\r\nContent-Type: application/problem+json\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                "Connection: close\r\n\r\n").encode()
        self._send(incoming.conn.sock, head + body)
        self._drop(incoming, registered)

    def _send(self, sock: Any, data: bytes) -> None:
        try:
            sock.send(data)  # small: it fits in the socket's buffer, or the client is gone
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EPIPE, errno.ECONNRESET):
                self.log.debug("could not answer a client being read: %s", exc)

    def _drop(self, incoming: _Incoming, registered: bool = True) -> None:
        conn = self._forget(incoming)
        if registered:
            self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def _forget(self, incoming: _Incoming) -> Any:
        self.incoming.pop(id(incoming.conn), None)
        self.buffered -= len(incoming.buffer)
        return incoming.conn

    # -- deadlines: checked by the worker's loop, about once a second ---------------------------------

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for incoming in [i for i in self.incoming.values() if i.deadline <= now]:
            what = "headers" if incoming.body_start is None else "body"
            limit = self.header_timeout if incoming.body_start is None else self.body_timeout
            self._refuse(incoming, _Refuse(408, "Request Timeout", f"the request's {what} did not arrive within "
                                                                   f"{limit:g} s"), registered=True)
