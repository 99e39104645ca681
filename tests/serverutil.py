"""Start, stop and kill a real ``kgservice serve`` process (gunicorn) for end-to-end tests.

    with RealServer(tmp_path / "data", auth_required=False) as server:
        reply = server.request("GET", "/health")

The server runs in a session of its own (``start_new_session``), so :meth:`RealServer.kill`
can SIGKILL the whole process group at once: the gunicorn master, its worker and the
reasoning processes. HTTP goes through the standard library only, and only to 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
TIME_LIMIT = "https://w3id.org/esi-kg/problems/time-limit"

#: A fixed bug, kept as the message of its regression checks
#: (tests/security/test_durability.py::test_a_query_right_after_the_store_reopens_is_answered).
FORK_DEADLOCK = (
    "regression: kgservice.isolation.run_forked forks the server process to run a SPARQL query while RocksDB's "
    "background threads (flush, compaction, purge after the store is opened) may hold the database mutex; "
    "the child inherits the mutex locked, blocks for ever in rocksdb::DBImpl::GetSnapshotImpl "
    "(Store.query -> snapshot) and the query is answered 503 time-limit after ESI_QUERY_TIMEOUT_S. "
    "Seen on the first queries after the store is opened, after a crash or when it is new."
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Reply:
    """One HTTP answer: status, headers (case-insensitive) and the raw body."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def http_request(base_url: str, method: str, path: str, body: Any = None, *, token: str | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 30.0) -> Reply:
    """Send one request on a fresh connection; a dict or list body is sent as JSON."""
    host, _, port = base_url.removeprefix("http://").partition(":")
    if host != HOST:
        raise ValueError(f"tests talk to {HOST} only, not {host}")
    sent = dict(headers or {})
    if isinstance(body, dict | list):
        body = json.dumps(body).encode("utf-8")
        sent.setdefault("Content-Type", "application/json")
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def sparql_select(base_url: str, query: str, *, token: str | None = None, timeout: float = 30.0) -> Reply:
    """POST a SPARQL query (form-encoded, SPARQL 1.1 Protocol) and ask for JSON results."""
    return http_request(base_url, "POST", "/sparql", urlencode({"query": query}).encode("ascii"), token=token,
                        headers={"Content-Type": "application/x-www-form-urlencoded",
                                 "Accept": "application/sparql-results+json"}, timeout=timeout)


def unordered(value: Any) -> Any:
    """JSON with every list in a canonical order: stored cases come back with their lists sorted."""
    if isinstance(value, dict):
        return {k: unordered(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted((unordered(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    return value


def create_token(data_dir: Path, site: str, *scopes: str) -> str:
    """Make a token with the command line (``kgservice token create``) and return its secret."""
    done = subprocess.run(
        [sys.executable, "-m", "kgservice.cli", "token", "create", "--site", site, "--scope", *scopes,
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, env=os.environ.copy(), check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kgservice token create failed ({done.returncode}): {done.stderr}")
    return done.stdout.strip()


def _live_members(pgid: int) -> list[int]:
    """Pids of the process group's members that are not zombies (Linux /proc; elsewhere: killpg)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    live = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            live.append(int(entry.name))
    return live


class RealServer:
    """``python -m kgservice.cli serve`` on a free port over ``data_dir``, in its own session."""

    def __init__(self, data_dir: Path, *, auth_required: bool = True, reasoning_workers: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.env_overrides = {
            "ESI_AUTH_REQUIRED": "true" if auth_required else "false",
            "ESI_REASONING_WORKERS": str(reasoning_workers),
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._stdout: Any = None
        self._stderr: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # -- life cycle ----------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> RealServer:
        """Start the server and wait until ``GET /health`` answers 200; retry on a taken port."""
        if self.process is not None:
            raise RuntimeError("the server is running already")
        last_error = ""
        for _ in range(3):
            self._spawn()
            ready, last_error = self._wait_healthy(timeout)
            if ready:
                return self
            self.kill()
            if "in use" not in last_error:
                break
        raise RuntimeError(f"kgservice serve did not come up on {self.base_url}:\n{last_error}")

    def _spawn(self) -> None:
        self.port = free_port()
        env = os.environ.copy()
        env.update(self.env_overrides)
        env.pop("ESI_HOST", None)
        self._stdout = tempfile.TemporaryFile(prefix="kgservice-out-")
        self._stderr = tempfile.TemporaryFile(prefix="kgservice-err-")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kgservice.cli", "serve", "--host", HOST, "--port", str(self.port),
             "--data-dir", str(self.data_dir)],
            stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=self._stderr, env=env,
            start_new_session=True,
        )

    def _wait_healthy(self, timeout: float) -> tuple[bool, str]:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False, f"exited with {self.process.returncode}:\n{self.stderr()}"
            try:
                # Ours, not another process that took the port first: gunicorn says where it listens.
                if (http_request(self.base_url, "GET", "/health", timeout=2).status == 200
                        and f"Listening at: {self.base_url}" in self.stderr()):
                    return True, ""
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        return False, f"no answer from GET /health within {timeout:g} s:\n{self.stderr()}"

    def stop(self, timeout: float = 15.0) -> None:
        """Stop gracefully (SIGTERM to the gunicorn master), then SIGKILL whatever is left."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group (master, worker, reasoning processes) and reap the master."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(10)
        self._wait_group_gone(5.0)
        for log in (self._stdout, self._stderr):
            if log is not None:
                log.close()
        self._stdout = self._stderr = None
        self.process = None

    def _wait_group_gone(self, timeout: float) -> None:
        """Wait (briefly) until no live process of the group is left (zombies hold no files)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _live_members(self.process.pid):
            time.sleep(0.02)

    def restart(self) -> RealServer:
        self.stop()
        return self.start()

    def __enter__(self) -> RealServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- output and HTTP -------------------------------------------------------------------------

    def stderr(self) -> str:
        """What the server wrote to stderr so far (gunicorn's error log)."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return str(self._stderr.read().decode("utf-8", "replace"))

    def request(self, method: str, path: str, body: Any = None, **options: Any) -> Reply:
        return http_request(self.base_url, method, path, body, **options)
