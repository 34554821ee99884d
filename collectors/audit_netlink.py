"""The kernel audit netlink socket (NETLINK_AUDIT), spoken directly: status, rules, daemon role, records.

No auditd and no libaudit: the messages are the kernel's own structs.
``AuditSocket`` is one socket; the collector uses one for control requests
(status, rules) and one to read records, either as the registered audit
daemon (unicast: the kernel then stops copying records to its log) or as a
member of the read-only multicast group beside a running auditd.

Wire layout (host byte order): ``nlmsghdr`` (u32 len, u16 type, u16 flags,
u32 seq, u32 port), then the payload; records are text, ``audit(SEC.MS:SERIAL): k=v ...``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from collectors.base import CollectorError, translate_os_error

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4

AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_LIST_RULES = 1013
AUDIT_ADD_RULE = 1011
AUDIT_DEL_RULE = 1012
AUDIT_REPLACE = 1329  # the kernel asks the registered daemon whether it lives: someone else wants the role

AUDIT_STATUS_ENABLED = 0x1
AUDIT_STATUS_PID = 0x4
AUDIT_STATUS_BACKLOG_LIMIT = 0x10
AUDIT_STATUS_BACKLOG_WAIT_TIME = 0x20

_NLMSGHDR = struct.Struct("=IHHII")
# mask enabled failure pid rate_limit backlog_limit lost backlog feature_bitmap backlog_wait_time
_STATUS = struct.Struct("=IIIIIIIIII")
_RECV = 1 << 17
_CONTROL_TYPES = frozenset({NLMSG_ERROR, NLMSG_DONE, AUDIT_GET, AUDIT_LIST_RULES})


@dataclass(frozen=True, slots=True)
class AuditStatus:
    """The kernel's audit status (``auditctl -s``)."""

    enabled: int  # 0 off, 1 on, 2 on and locked (immutable until reboot)
    failure: int
    pid: int  # the registered audit daemon, 0 for none
    rate_limit: int
    backlog_limit: int
    lost: int
    backlog: int
    backlog_wait_time: int


@dataclass(frozen=True, slots=True)
class Message:
    """One netlink message: its type and payload."""

    type: int
    seq: int
    payload: bytes


def status_request(mask: int = 0, enabled: int = 0, pid: int = 0, backlog_limit: int = 0,
                   backlog_wait_time: int = 0) -> bytes:
    """The ``struct audit_status`` payload of an AUDIT_SET request (only ``mask``'d fields count)."""
    return _STATUS.pack(mask, enabled, 0, pid, 0, backlog_limit, 0, 0, 0, backlog_wait_time)


def decode_status(payload: bytes) -> AuditStatus:
    """The status in an AUDIT_GET reply (older kernels send a shorter struct)."""
    raw = payload[:_STATUS.size].ljust(_STATUS.size, b"\0")
    _, enabled, failure, pid, rate, backlog_limit, lost, backlog, _, wait = _STATUS.unpack(raw)
    return AuditStatus(enabled, failure, pid, rate, backlog_limit, lost, backlog, wait)


def split_messages(data: bytes) -> Iterator[Message]:
    """The netlink messages of one datagram (a truncated tail is ignored).

    A record the kernel sends to its daemon carries in ``nlmsg_len`` the
    length of its text alone (a long-standing quirk the multicast copy
    corrects), and the kernel sends one record a datagram: a record's text
    is the rest of the datagram, whatever its header says.
    """
    off = 0
    n = len(data)
    while off + _NLMSGHDR.size <= n:
        length, mtype, _flags, seq, _port = _NLMSGHDR.unpack_from(data, off)
        if mtype not in _CONTROL_TYPES:
            yield Message(mtype, seq, data[off + _NLMSGHDR.size:].rstrip(b"\0"))
            return
        if length < _NLMSGHDR.size:
            return
        yield Message(mtype, seq, data[off + _NLMSGHDR.size:off + length])
        off += (length + 3) & ~3


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IOVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t), ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


class _Batches:
    """recvmmsg(2): up to ``SLOTS`` datagrams in one system call. The kernel sends one record a datagram and an
    audited exec makes seven or eight; one recv each was most of the reader's system time."""

    SLOTS = 64
    SIZE = 16384  # a record is at most MAX_AUDIT_MESSAGE_LENGTH (8970) bytes with its netlink header

    def __init__(self) -> None:
        call = ctypes.CDLL(None, use_errno=True).recvmmsg
        call.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        call.restype = ctypes.c_int
        self._call = call
        self._buf = ctypes.create_string_buffer(self.SLOTS * self.SIZE)
        self._base = ctypes.addressof(self._buf)
        self._iov = (_IOVec * self.SLOTS)()
        self._msgs = (_MMsgHdr * self.SLOTS)()
        for i in range(self.SLOTS):
            self._iov[i].iov_base = self._base + i * self.SIZE
            self._iov[i].iov_len = self.SIZE
            self._msgs[i].msg_hdr.msg_iov = ctypes.pointer(self._iov[i])
            self._msgs[i].msg_hdr.msg_iovlen = 1

    def read(self, fd: int) -> list[bytes]:
        """The datagrams queued now (at most ``SLOTS``); empty when none; OSError as recv raises it."""
        n = self._call(fd, ctypes.addressof(self._msgs), self.SLOTS, socket.MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                return []
            raise OSError(err, os.strerror(err))
        msgs, base, size = self._msgs, self._base, self.SIZE
        return [ctypes.string_at(base + i * size, msgs[i].msg_len) for i in range(n)]


def _batches() -> _Batches | None:
    try:
        return _Batches()
    except (AttributeError, OSError):  # a C library without recvmmsg: one recv a datagram
        return None


class AuditSocket:
    """A NETLINK_AUDIT socket: requests with acknowledgements, and record reading."""

    def __init__(self, rcvbuf: int = 1 << 20, multicast: bool = False) -> None:
        self.rcvbuf = rcvbuf
        self.multicast = multicast
        self.sock: socket.socket | None = None
        self._seq = 0
        self.pending: list[Message] = []  # records read while waiting for an acknowledgement
        self._batches: _Batches | bool | None = False  # made at the first receive (a control socket never reads)

    def open(self) -> AuditSocket:
        """Open (and for multicast, join the read-only group); CollectorError says why not."""
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        except OSError as exc:
            raise translate_os_error("kernel audit socket", exc) from exc
        try:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < self.rcvbuf:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            s.bind((0, AUDIT_NLGRP_READLOG if self.multicast else 0))
        except OSError as exc:
            s.close()
            raise translate_os_error("kernel audit read-only multicast group" if self.multicast
                                     else "kernel audit socket", exc) from exc
        self.sock = s
        return self

    def close(self) -> None:
        """Close the socket (the kernel drops a daemon registration whose socket is gone)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> AuditSocket:
        return self if self.sock is not None else self.open()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def fileno(self) -> int:
        """The socket's descriptor, for select()."""
        assert self.sock is not None
        return self.sock.fileno()

    # -- requests -----------------------------------------------------------
    def request(self, mtype: int, payload: bytes = b"", timeout: float = 2.0) -> list[Message]:
        """Send one request and collect its replies up to the acknowledgement; OSError on a kernel error."""
        assert self.sock is not None
        self._seq += 1
        seq = self._seq
        msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), mtype, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + payload
        self.sock.sendto(msg, (0, 0))
        replies: list[Message] = []
        while True:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                raise OSError(errno.ETIMEDOUT, f"no answer from the kernel to audit request {mtype}")
            data = self.sock.recv(_RECV)
            for m in split_messages(data):
                if m.seq != seq:
                    if m.type >= AUDIT_GET and m.type not in (AUDIT_GET, AUDIT_LIST_RULES):
                        self.pending.append(m)
                    continue
                if m.type == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", m.payload)[0] if len(m.payload) >= 4 else 0
                    if code:
                        raise OSError(code, os.strerror(code))
                    if mtype not in (AUDIT_GET, AUDIT_LIST_RULES) or replies:
                        return replies
                    continue  # GET's reply follows its acknowledgement
                if m.type == NLMSG_DONE:
                    return replies
                replies.append(m)
                if mtype == AUDIT_GET:
                    return replies

    def status(self) -> AuditStatus:
        """The kernel's audit status."""
        got = self.request(AUDIT_GET)
        return decode_status(got[0].payload if got else b"")

    def set_status(self, mask: int, enabled: int = 0, pid: int = 0, backlog_limit: int = 0,
                   backlog_wait_time: int = 0) -> None:
        """Change the fields in ``mask``; OSError from the kernel (EPERM when locked, EEXIST for a live daemon)."""
        self.request(AUDIT_SET, status_request(mask, enabled, pid, backlog_limit, backlog_wait_time))

    def list_rules(self) -> list[bytes]:
        """The kernel's rules, as ``struct audit_rule_data`` payloads."""
        return [m.payload for m in self.request(AUDIT_LIST_RULES) if m.type == AUDIT_LIST_RULES]

    def add_rule(self, rule: bytes) -> None:
        """Add one rule (EEXIST if the very same rule is there already)."""
        self.request(AUDIT_ADD_RULE, rule)

    def delete_rule(self, rule: bytes) -> None:
        """Delete one rule (ENOENT if it is not there)."""
        self.request(AUDIT_DEL_RULE, rule)

    # -- records --------------------------------------------------------------
    def receive(self, timeout: float | None, batch: int = 64,
                wake: tuple[int, ...] = ()) -> tuple[list[Message], int]:
        """Messages read within ``timeout`` (None: until some come; up to ``batch`` datagrams) and how often the
        socket overflowed. A descriptor of ``wake`` that turns readable (not read here) ends the wait early."""
        assert self.sock is not None
        out, self.pending = self.pending, []
        overflows = 0
        if out:
            timeout = 0.0
        fd = self.sock.fileno()
        ready, _, _ = select.select([fd, *wake], [], [], timeout)
        if fd not in ready:
            return out, 0
        if self._batches is False:
            self._batches = _batches()
        batches = self._batches if isinstance(self._batches, _Batches) else None
        got = 0
        while got < batch:
            try:
                if batches is not None:
                    datagrams = batches.read(fd)
                    if not datagrams:
                        break
                else:
                    datagrams = [self.sock.recv(_RECV, socket.MSG_DONTWAIT)]
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    overflows += 1
                    got += 1
                    continue
                raise
            got += len(datagrams)
            for data in datagrams:
                out.extend(split_messages(data))
            if batches is not None and len(datagrams) < batches.SLOTS:
                break  # the queue is empty (or was, a moment ago): the caller's next select says
        return out, overflows


def probe(multicast: bool) -> str:
    """Empty if an audit socket of this kind can be opened here, else why not."""
    try:
        AuditSocket(rcvbuf=1 << 16, multicast=multicast).open().close()
    except CollectorError as exc:
        return str(exc)
    return ""
