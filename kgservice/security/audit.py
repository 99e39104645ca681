"""The audit trail: one JSON line per read, write, delete or query of case data.

Append-only (``O_APPEND``), written and flushed before the response leaves. A record names
the token by its id, never its secret, and a query by the SHA-256 of its text.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lock = threading.Lock()

    def record(self, **fields: Any) -> None:
        entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), **fields}
        # ASCII: a U+2028, U+0085 or lone surrogate in a client's value is written as an escape,
        # so every reader (``splitlines`` too) sees one record per line, and the line is valid UTF-8.
        line = (json.dumps(entry, ensure_ascii=True, sort_keys=False) + "\n").encode("ascii")
        with self._lock:
            os.write(self._fd, line)  # one write(2) with O_APPEND: lines never interleave
            if self.fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)
