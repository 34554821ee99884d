"""Connections seen by polling the socket tables with psutil (the unprivileged fallback).

Each poll lists the host's TCP and UDP sockets and reports those that were
not there the poll before. Connections that open and close between two
polls are not seen, and DNS query names are unknown: that is the reduced
fidelity of ``mode: poll``. The first poll only learns what already exists.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# A socket still in a closing state had a connection: a short one polled late is still reported.
_CONNECTED = frozenset({"ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT",
                        "LAST_ACK", "CLOSING"})
_MAPPED = "::ffff:"

Lister = Callable[[], Iterable[Any]]


@dataclass(frozen=True, slots=True)
class Conn:
    """One new connection: its kind (net.connect, net.accept, net.dns) and addresses."""

    kind: str
    proto: str
    direction: str
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    pid: int | None


def _ip(addr: str) -> str:
    return addr[len(_MAPPED):] if addr.startswith(_MAPPED) and "." in addr else addr


def psutil_lister() -> Iterable[Any]:
    """The host's inet sockets as psutil reports them (pid None where not permitted)."""
    import psutil

    return psutil.net_connections(kind="inet")  # type: ignore[no-any-return]


class ConnectionPoller:
    """Reports connections that are new since the previous poll."""

    def __init__(self, lister: Lister = psutil_lister) -> None:
        """List sockets with ``lister`` (psutil's ``net_connections`` by default)."""
        self._lister = lister
        self._known: set[tuple[str, str, int, str, int]] | None = None

    def poll(self) -> list[Conn]:
        """Connections opened since the last call; empty on the first call."""
        listening: set[tuple[str, int]] = set()
        current: dict[tuple[str, str, int, str, int], tuple[str, int | None]] = {}
        for c in self._lister():
            proto = "tcp" if c.type == socket.SOCK_STREAM else "udp"
            if c.status == "LISTEN":
                listening.add((proto, c.laddr.port))
                continue
            if not c.raddr or (proto == "tcp" and c.status not in _CONNECTED):
                continue
            key = (proto, _ip(c.laddr.ip), c.laddr.port, _ip(c.raddr.ip), c.raddr.port)
            current[key] = (c.status, c.pid)
        known, self._known = self._known, set(current)
        if known is None:
            return []
        out: list[Conn] = []
        for key in current.keys() - known:
            proto, lip, lport, rip, rport = key
            pid = current[key][1]
            if proto == "tcp" and (proto, lport) in listening:
                out.append(Conn("net.accept", proto, "in", lip, lport, rip, rport, pid))
            elif proto == "udp" and rport == 53:
                out.append(Conn("net.dns", proto, "out", lip, lport, rip, rport, pid))
            else:
                out.append(Conn("net.connect", proto, "out", lip, lport, rip, rport, pid))
        out.sort(key=lambda c: (c.local_port, c.remote_ip, c.remote_port))
        return out
