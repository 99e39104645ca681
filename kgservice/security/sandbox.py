"""Nothing goes out, enforced by the kernel: a seccomp filter for query children and workers.

The Python audit hook (``guard.py``) sees only what Python does. Oxigraph (Rust) and the
reasoners' native code open sockets without Python knowing, so a process that runs them
on behalf of a client first calls :func:`enter`. From then on, for that process and every
thread and child it makes, the kernel answers ``EPERM`` to:

- ``socket()`` of any family but ``AF_UNIX`` (pipes and ``socketpair`` keep working);
- ``connect()`` of any socket: a socket inherited from the server (its listener, a client's
  connection) can never be pointed somewhere else, and nor can a Unix socket (a local
  resolver or proxy would be a way out);
- ``sendto()`` with a destination address, and ``io_uring_setup()`` (io_uring could open and
  connect sockets without these system calls);
- every system call made through a foreign ABI (x32, or 32-bit ``int 0x80`` on x86-64,
  where ``socketcall`` would bypass the rules above).

The filter needs no privilege: ``PR_SET_NO_NEW_PRIVS`` lets any process install it, and it
can never be removed. It is built with ``ctypes`` for Linux on x86-64 and AArch64; anywhere
else :func:`enter` raises :class:`SandboxUnavailable`, and callers refuse to run (fail closed).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import platform
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)


class SandboxUnavailable(RuntimeError):
    """The kernel refused the filter, or this platform has none: do not run untrusted work."""


@dataclass(frozen=True)
class _Arch:
    """System call numbers of one architecture, and the AUDIT_ARCH_* value the kernel reports."""

    audit: int
    socket: int
    connect: int
    sendto: int
    io_uring_setup: int
    seccomp: int
    x32_bit: int | None = None  # x86-64 only: the flag that marks an x32 system call


_X86_64 = _Arch(audit=0xC000003E, socket=41, connect=42, sendto=44, io_uring_setup=425, seccomp=317,
                x32_bit=0x40000000)
_AARCH64 = _Arch(audit=0xC00000B7, socket=198, connect=203, sendto=206, io_uring_setup=425, seccomp=277)
_ARCHES = {"x86_64": _X86_64, "amd64": _X86_64, "aarch64": _AARCH64, "arm64": _AARCH64}

# <linux/filter.h>, <linux/seccomp.h>, <linux/prctl.h>
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_OFF_NR, _OFF_ARCH, _OFF_ARG0, _OFF_ARG4 = 0, 4, 16, 48
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1

_entered = False


def program(machine: str | None = None) -> bytes:
    """The BPF program for ``machine`` (default: this one), as ``struct sock_filter`` records.

    Written with labels: a jump names the instruction it goes to, and :func:`_assemble`
    works out the offsets.
    """
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        raise SandboxUnavailable(f"no seccomp filter for the {machine or platform.machine()} architecture")
    foreign_abi = [] if arch.x32_bit is None else [("jge", arch.x32_bit, "deny", None)]
    return _assemble([
        ("load", _OFF_ARCH),
        ("jeq", arch.audit, None, "deny"),  # a foreign ABI: refuse everything it asks
        ("load", _OFF_NR),
        *foreign_abi,
        ("jeq", arch.socket, None, "not-socket"),
        ("load", _OFF_ARG0),  # the family (an int: the low word of the argument)
        ("jeq", socket.AF_UNIX, "allow", "deny"),
        ("label", "not-socket"),
        ("jeq", arch.connect, "deny", None),
        ("jeq", arch.io_uring_setup, "deny", None),
        ("jeq", arch.sendto, None, "allow"),
        ("load", _OFF_ARG4),  # sendto's destination address: allowed only when it is NULL
        ("jeq", 0, None, "deny"),
        ("load", _OFF_ARG4 + 4),
        ("jeq", 0, "allow", "deny"),
        ("label", "deny"),
        ("ret", _RET_ERRNO | errno.EPERM),
        ("label", "allow"),
        ("ret", _RET_ALLOW),
    ])


def _assemble(source: list[tuple[object, ...]]) -> bytes:
    """Instructions with labels to bytes; a jump to ``None`` goes to the next instruction."""
    labels: dict[object, int] = {}
    code: list[tuple[object, ...]] = []
    for item in source:
        if item[0] == "label":
            labels[item[1]] = len(code)
        else:
            code.append(item)
    out = []
    for i, item in enumerate(code):
        if item[0] == "load":
            out.append(struct.pack("=HBBI", _LD_W_ABS, 0, 0, item[1]))
        elif item[0] == "ret":
            out.append(struct.pack("=HBBI", _RET_K, 0, 0, item[1]))
        else:
            kind, value, if_true, if_false = item
            jt, jf = (0 if to is None else labels[to] - i - 1 for to in (if_true, if_false))
            if not (0 <= jt < 256 and 0 <= jf < 256):
                raise SandboxUnavailable(f"seccomp program: instruction {i} cannot jump that far")
            out.append(struct.pack("=HBBI", _JEQ_K if kind == "jeq" else _JGE_K, jt, jf, value))
    return b"".join(out)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def enter(what: str = "this process") -> None:
    """Install the filter in the calling process (all its threads), or raise ``SandboxUnavailable``.

    Call it before the process does any work for a client. Calling it again is harmless.
    """
    global _entered
    if _entered:
        return
    if platform.system() != "Linux":
        raise SandboxUnavailable(f"{what}: the network sandbox needs Linux seccomp; refusing to run without it")
    arch = _ARCHES.get(platform.machine())
    if arch is None:
        raise SandboxUnavailable(f"{what}: no seccomp filter for the {platform.machine()} architecture")
    code = program()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SandboxUnavailable(f"{what}: prctl(PR_SET_NO_NEW_PRIVS) failed: {_errno()}")
    buffer = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.addressof(buffer))
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(ctypes.c_long(arch.seccomp), ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
                    ctypes.c_long(_SECCOMP_FILTER_FLAG_TSYNC), ctypes.byref(prog)) != 0:
        raise SandboxUnavailable(f"{what}: seccomp(SECCOMP_SET_MODE_FILTER) failed: {_errno()}")
    _entered = True


def _errno() -> str:
    code = ctypes.get_errno()
    return f"{errno.errorcode.get(code, code)} ({code})"


def entered() -> bool:
    """Whether this process is inside the sandbox (read from the kernel, not from a flag)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return any(line.split() == ["Seccomp:", "2"] for line in status)
    except OSError:
        return False
