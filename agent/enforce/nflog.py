"""Attempts the agent's table dropped, read back from the kernel (NFLOG over ``NETLINK_NETFILTER``).

A dropped packet never reaches the network collector's capture, so in
preventive mode the table's output drop rules also log to an NFLOG group,
and this reader turns each logged packet into a ``net.connect`` event with the
sending socket's uid (the kernel adds it for a local sender): every attempt is
still a finding with its operator. In reactive mode the table logs the packet
whose destination it has just blocked itself (prefix ``FIRST_PACKET``): that
one goes to ``first`` (the enforcer adopts the block), not to the pipeline
(the packet went out, so the network collector sees it).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Callable

from agent.enforce.nft import FIRST_PACKET
from agent.events import Event, Net, Process
from collectors.loop import Served

_log = logging.getLogger("dutywatch.enforce.nflog")
NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD, NFULA_PREFIX, NFULA_UID = 9, 10, 11
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")
_PROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp", 136: "udplite"}


def _nla(kind: int, data: bytes) -> bytes:
    body = _NLA.pack(_NLA.size + len(data), kind) + data
    return body + b"\0" * (-len(body) % 4)


def _config(group: int, attrs: bytes) -> bytes:
    payload = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(group)) + attrs
    return _NLMSG.pack(_NLMSG.size + len(payload), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                       NLM_F_REQUEST | NLM_F_ACK, 0, 0) + payload


def parse_packet(payload: bytes) -> tuple[str, str, int | None] | None:
    """(protocol, destination address, destination port) of an IP packet, or None."""
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4 and len(payload) >= 20:
        ihl = (payload[0] & 0x0F) * 4
        proto, dst = payload[9], str(ipaddress.IPv4Address(payload[16:20]))
        rest = payload[ihl:]
    elif version == 6 and len(payload) >= 40:
        proto, dst = payload[6], str(ipaddress.IPv6Address(payload[24:40]))
        rest = payload[40:]
    else:
        return None
    port = struct.unpack_from("!H", rest, 2)[0] if proto in (6, 17, 132, 136) and len(rest) >= 4 else None
    return _PROTO.get(proto, str(proto)), dst, port


class DropLog:
    """Reads NFLOG group ``group``: each dropped attempt to ``emit`` as a ``net.connect`` event, each first
    packet the kernel blocked to ``first(destination, uid, when)``."""

    def __init__(self, group: int, emit: Callable[[Event], object] | None, clock: Callable[[], float] = time.time,
                 first: Callable[[str, int | None, float], object] | None = None) -> None:
        self.group = group
        self.emit = emit
        self.first = first
        self.clock = clock
        self.lost = 0  # packets the kernel could not queue to us (ENOBUFS), counted not silent
        self._sock: socket.socket | None = None
        self._served: Served | None = None

    def start(self) -> None:
        """Bind the group (copy the first 128 bytes of each packet) and start reading."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        sock.send(_config(self.group, _nla(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND))))
        self._ack(sock)
        sock.send(_config(self.group, _nla(NFULA_CFG_MODE, struct.pack("!IBx", 128, NFULNL_COPY_PACKET))))
        self._ack(sock)
        self._sock = sock
        self._served = Served(sock.fileno(), self._readable, "enforce-droplog")
        self._served.start()

    @staticmethod
    def _ack(sock: socket.socket) -> None:
        data = sock.recv(4096)
        if len(data) >= _NLMSG.size + 4:
            _, kind, _, _, _ = _NLMSG.unpack_from(data)
            if kind == 2:  # NLMSG_ERROR
                err = -struct.unpack_from("=i", data, _NLMSG.size)[0]
                if err:
                    raise OSError(err, f"NFLOG config: {os.strerror(err)}")

    def stop(self) -> None:
        """Stop reading and unbind."""
        if self._served is not None:
            self._served.stop()
        if self._sock is not None:
            self._sock.close()

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:  # ENOBUFS: the kernel dropped log messages
            self.lost += 1
            return
        self._messages(data)

    def _messages(self, data: bytes) -> None:
        off = 0
        while off + _NLMSG.size <= len(data):
            length, kind, _, _, _ = _NLMSG.unpack_from(data, off)
            if length < _NLMSG.size:
                return
            if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                self._packet(data[off + _NLMSG.size + _NFGEN.size: off + length])
            off += (length + 3) & ~3

    def _packet(self, attrs: bytes) -> None:
        payload, uid, prefix = b"", None, b""
        off = 0
        while off + _NLA.size <= len(attrs):
            alen, akind = _NLA.unpack_from(attrs, off)
            if alen < _NLA.size:
                break
            value = attrs[off + _NLA.size: off + alen]
            akind &= 0x3FFF
            if akind == NFULA_PAYLOAD:
                payload = value
            elif akind == NFULA_PREFIX:
                prefix = value.rstrip(b"\0")
            elif akind == NFULA_UID and len(value) >= 4:
                uid = struct.unpack("!I", value[:4])[0]
            off += (alen + 3) & ~3
        got = parse_packet(payload)
        if got is None:
            return
        proto, dst, port = got
        if prefix == FIRST_PACKET.encode():
            if self.first is not None:
                try:
                    self.first(dst, uid, self.clock())
                except Exception:  # one bad adoption must not end the reader
                    _log.exception("adopting the kernel's block of %s failed", dst)
            return
        if self.emit is not None:
            self.emit(Event("net.connect", self.clock(), "enforce", process=Process(uid=uid),
                            net=Net(proto=proto, direction="out", remote_ip=dst, remote_port=port),
                            detail="dropped by the enforcement table"))
