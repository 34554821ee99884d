"""The Linux process events connector: a netlink socket and its message decoding.

The kernel multicasts one ``struct proc_event`` per fork, exec, id change and
exit to sockets bound to the ``CN_IDX_PROC`` group of ``NETLINK_CONNECTOR``,
once a listener has sent ``PROC_CN_MCAST_LISTEN`` (which needs CAP_NET_ADMIN
in the initial user and pid namespaces). Decoding is a pure function of the
datagram so it can be tested without a kernel.

Wire layout (all host byte order)::

    nlmsghdr  u32 len, u16 type, u16 flags, u32 seq, u32 port      16 bytes
    cn_msg    u32 idx, u32 val, u32 seq, u32 ack, u16 len, u16 flags 20 bytes
    proc_event u32 what, u32 cpu, u64 timestamp_ns, then event_data
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from types import TracebackType

from collectors.base import CollectorError, translate_os_error

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_ERROR = 2
NLMSG_DONE = 3
SO_RCVBUFFORCE = 33

PROC_EVENT_NONE = 0x0
PROC_EVENT_FORK = 0x1
PROC_EVENT_EXEC = 0x2
PROC_EVENT_UID = 0x4
PROC_EVENT_GID = 0x40
PROC_EVENT_SID = 0x80
PROC_EVENT_PTRACE = 0x100
PROC_EVENT_COMM = 0x200
PROC_EVENT_COREDUMP = 0x40000000
PROC_EVENT_EXIT = 0x80000000

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_EVENT_HEAD = struct.Struct("=IIQ")
_FOUR_INTS = struct.Struct("=iiii")
_TWO_INTS = struct.Struct("=ii")
_EXIT = struct.Struct("=iiIIii")
_ID = struct.Struct("=iiII")
_ACK = struct.Struct("=I")

_KINDS = {
    PROC_EVENT_NONE: "ack", PROC_EVENT_FORK: "fork", PROC_EVENT_EXEC: "exec", PROC_EVENT_UID: "uid",
    PROC_EVENT_GID: "gid", PROC_EVENT_SID: "sid", PROC_EVENT_PTRACE: "ptrace", PROC_EVENT_COMM: "comm",
    PROC_EVENT_COREDUMP: "coredump", PROC_EVENT_EXIT: "exit",
}


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """One decoded kernel process event.

    ``pid``/``tgid`` are the task the event is about (the child for a fork).
    ``parent_pid``/``parent_tgid`` are set for fork and, on kernels that carry
    them, exit. ``exit_code`` is set for exit, ``ruid``/``euid`` for uid
    changes, ``error`` for the kernel's acknowledgement of a listen request.
    """

    kind: str  # fork | exec | uid | gid | sid | ptrace | comm | coredump | exit | ack | other
    pid: int
    tgid: int
    timestamp_ns: int = 0
    parent_pid: int | None = None
    parent_tgid: int | None = None
    exit_code: int | None = None
    ruid: int | None = None
    euid: int | None = None
    error: int | None = None
    cookie: int | None = None  # of an ack: the connector ack number, request's plus one

    @property
    def leader(self) -> bool:
        """True when the task is a thread-group leader, i.e. a process rather than a thread."""
        return self.pid == self.tgid


class DecodeError(ValueError):
    """A datagram did not have the layout of a process connector message."""


def _align4(n: int) -> int:
    return (n + 3) & ~3


def decode(datagram: bytes) -> list[ProcEvent]:
    """Every process event in one netlink datagram, in order.

    Messages for other connector ids are skipped; a truncated or malformed
    message raises DecodeError rather than producing a half-filled event.
    """
    out: list[ProcEvent] = []
    view = memoryview(datagram)
    offset = 0
    while offset + _NLMSGHDR.size <= len(view):
        length, msg_type, _flags, _seq, _port = _NLMSGHDR.unpack_from(view, offset)
        if length < _NLMSGHDR.size or offset + length > len(view):
            raise DecodeError(f"netlink message length {length} at offset {offset} overruns {len(view)} bytes")
        if msg_type == NLMSG_ERROR:
            raise DecodeError("netlink error message from the kernel")
        body = offset + _NLMSGHDR.size
        end = offset + length
        offset += _align4(length)
        if end - body < _CN_MSG.size:
            if msg_type == NLMSG_DONE:
                raise DecodeError(f"connector message of {end - body} bytes is shorter than its header")
            continue  # NLMSG_NOOP and the like carry no connector message
        idx, val, _cseq, cn_ack, data_len, _cflags = _CN_MSG.unpack_from(view, body)
        data = body + _CN_MSG.size
        if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
            continue
        if data + data_len > end:
            raise DecodeError(f"connector payload of {data_len} bytes overruns its netlink message")
        out.append(decode_event(bytes(view[data:data + data_len]), cn_ack))
    return out


def decode_event(payload: bytes, cn_ack: int = 0) -> ProcEvent:
    """One ``struct proc_event`` from its bytes; ``cn_ack`` is its connector header's ack number."""
    if len(payload) < _EVENT_HEAD.size:
        raise DecodeError(f"proc_event of {len(payload)} bytes is shorter than its header")
    what, _cpu, ts = _EVENT_HEAD.unpack_from(payload, 0)
    data = payload[_EVENT_HEAD.size:]
    kind = _KINDS.get(what, "other")
    try:
        if what == PROC_EVENT_FORK:
            ppid, ptgid, cpid, ctgid = _FOUR_INTS.unpack_from(data)
            return ProcEvent(kind, cpid, ctgid, ts, parent_pid=ppid, parent_tgid=ptgid)
        if what == PROC_EVENT_EXIT:
            if len(data) >= _EXIT.size:
                pid, tgid, code, _sig, ppid, ptgid = _EXIT.unpack_from(data)
                return ProcEvent(kind, pid, tgid, ts, parent_pid=ppid, parent_tgid=ptgid, exit_code=code)
            pid, tgid, code, _sig = struct.unpack_from("=iiII", data)
            return ProcEvent(kind, pid, tgid, ts, exit_code=code)
        if what == PROC_EVENT_UID:
            pid, tgid, ruid, euid = _ID.unpack_from(data)
            return ProcEvent(kind, pid, tgid, ts, ruid=ruid, euid=euid)
        if what == PROC_EVENT_NONE:
            # The acknowledgement reuses the event header; its error sits where pids would be.
            (err,) = _ACK.unpack_from(data)
            return ProcEvent(kind, 0, 0, ts, error=err, cookie=cn_ack)
        pid, tgid = _TWO_INTS.unpack_from(data)
        return ProcEvent(kind, pid, tgid, ts)
    except struct.error as exc:
        raise DecodeError(f"{kind} event of {len(payload)} bytes is truncated") from exc


def listen_request(port: int, op: int = PROC_CN_MCAST_LISTEN, cookie: int = 0) -> bytes:
    """The datagram that asks the kernel to start (or stop) sending process events.

    The kernel acknowledges it with an ack event whose ``cookie`` is
    ``cookie + 1`` (multicast, so other listeners' acks arrive too).

    The 4-byte form subscribes to every event type; it is the one every
    kernel since 2.6.15 accepts (newer kernels also take an 8-byte filtered
    form that older ones silently ignore).
    """
    payload = struct.pack("=I", op)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, cookie, cookie, len(payload), 0) + payload
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, port) + cn


@dataclass(frozen=True, slots=True)
class Received:
    """What one ``receive`` call read: the events, how many times the kernel
    reported lost messages (ENOBUFS: the receive buffer overflowed), and how
    many datagrams could not be decoded."""

    events: list[ProcEvent]
    overflows: int = 0
    malformed: int = 0


class ProcConnector:
    """A subscribed process-events socket.

    ``open()`` creates, binds and subscribes; ``receive(timeout)`` returns
    the events of whatever datagrams are waiting (none on timeout) and how
    often the kernel reported lost messages; the socket stays usable after
    an overflow. Use as a context manager.
    """

    def __init__(self, rcvbuf: int = 8 << 20, confirm_timeout: float = 1.0) -> None:
        self._rcvbuf = rcvbuf
        self._confirm_timeout = confirm_timeout
        self._sock: socket.socket | None = None
        self._pending: list[ProcEvent] = []
        self.rcvbuf_effective = 0

    def open(self) -> ProcConnector:
        """Create the socket, bind to the proc group, subscribe and wait for the kernel's ack.

        Without the ack nothing would ever arrive: the kernel ignores the
        request from outside the initial pid and user namespaces, and does
        not acknowledge a refused one when no one else listens. Both raise
        CollectorError, so ``mode: auto`` can fall back to polling.
        """
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as exc:
            raise translate_os_error("netlink connector socket", exc) from exc
        try:
            self._grow_buffer(sock)
            sock.bind((0, CN_IDX_PROC))
            port = sock.getsockname()[0]
            sock.setblocking(False)
            self._sock = sock
            sock.sendto(listen_request(port, cookie=port), (0, 0))
            self._confirm(port + 1)
        except OSError as exc:
            self.close()
            raise translate_os_error("netlink process connector subscribe", exc) from exc
        except CollectorError:
            self.close()
            raise
        return self

    def _confirm(self, cookie: int) -> None:
        deadline = time.monotonic() + self._confirm_timeout
        while (left := deadline - time.monotonic()) > 0:
            for event in self._read(self._socket(), min(left, 0.25), 256).events:
                if event.kind != "ack" or event.cookie != cookie:
                    self._pending.append(event)
                elif event.error:
                    raise translate_os_error("netlink process connector subscribe", OSError(event.error, ""))
                else:
                    return
        raise CollectorError("the kernel did not acknowledge the process events subscription "
                             "(not in the initial pid and user namespaces, or not permitted)")

    def _grow_buffer(self, sock: socket.socket) -> None:
        # A big buffer rides out exec storms; FORCE ignores rmem_max but needs
        # CAP_NET_ADMIN, which this socket needs anyway, so fall back quietly.
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self._rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
        self.rcvbuf_effective = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def fileno(self) -> int:
        """The socket's descriptor, for select."""
        return self._socket().fileno()

    def receive(self, timeout: float | None, max_datagrams: int = 256, wake: int | None = None) -> Received:
        """Events waiting now, or within ``timeout`` seconds (None: until some come); at most ``max_datagrams``.

        ``wake`` is another descriptor that ends the wait when it turns readable (the stop event's).
        """
        sock = self._socket()
        if self._pending:
            events, self._pending = self._pending, []
            return Received(events)
        return self._read(sock, timeout, max_datagrams, wake)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise CollectorError("process connector is not open")
        return self._sock

    @staticmethod
    def _read(sock: socket.socket, timeout: float | None, max_datagrams: int, wake: int | None = None) -> Received:
        fd = sock.fileno()
        ready, _, _ = select.select([fd] if wake is None else [fd, wake], [], [], timeout)
        if fd not in ready:
            return Received([])
        events: list[ProcEvent] = []
        overflows = malformed = 0
        for _ in range(max_datagrams):
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise translate_os_error("netlink process connector receive", exc) from exc
                overflows += 1  # the error is reported once; later datagrams are still readable
                continue
            try:
                events.extend(decode(data))
            except DecodeError:
                malformed += 1
        return Received(events, overflows, malformed)

    def close(self) -> None:
        """Unsubscribe (best effort) and close the socket."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        # Without IGNORE the kernel keeps counting us as a listener and keeps
        # building events for nobody; closing goes ahead even if this fails.
        with contextlib.suppress(OSError):
            sock.sendto(listen_request(sock.getsockname()[0], PROC_CN_MCAST_IGNORE), (0, 0))
        sock.close()

    def __enter__(self) -> ProcConnector:
        return self.open() if self._sock is None else self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def has_net_admin(status: bytes) -> bool:
    """Whether a /proc/PID/status text shows CAP_NET_ADMIN (bit 12) in the effective set."""
    for line in status.splitlines():
        if line.startswith(b"CapEff:"):
            try:
                return bool(int(line.split()[1], 16) >> 12 & 1)
            except (IndexError, ValueError):
                return False
    return False


def own_status() -> bytes:
    """This process's own /proc status (empty when unreadable).

    Bytes on purpose: decoding could import a codec, and a process that has
    just dropped privileges may no longer be able to read its stdlib.
    """
    try:
        with open(f"/proc/{os.getpid()}/status", "rb") as f:
            return f.read()
    except OSError:
        return b""
