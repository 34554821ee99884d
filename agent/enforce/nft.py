"""The agent's own nftables table (family ``inet``), driven through the ``nft`` command.

The table is replaced whole at start and changed only by atomic ``nft -f``
transactions that rebuild its dynamic sets from the enforcer's state; no other
table is ever read or touched. Every dynamic element carries a kernel timeout
(the block's TTL, or the agent's lease while it runs), so a block outlives an
agent that died without lifting it by at most that long.

Order of the output chain (input mirrors it with source addresses): loopback
and the management channel first, then isolation, destination and zone
blocks, the zones left open, and last the blocks of the registry's default
zone (everything no zone names).

Reactive blocking by the kernel (``Layout.first_packet``): the output chain
ends with a rule that puts the destination of a packet toward a forbidden zone
(the ``forbid`` sets) into ``dest`` itself, with a timeout, and logs that
packet to the agent's NFLOG group with the prefix ``FIRST_PACKET``: the block
is in force from that packet on, however busy the agent is. The ``forbid``
elements carry the agent's lease like every other dynamic element, so with no
agent renewing them the rule stops blocking within the lease.
"""

from __future__ import annotations

import ipaddress
import json
import math
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
DYNAMIC = ("iso", "dest", "zone", "wide", "forbid")  # sets the enforcer fills; each has a v4 and a v6 twin
FIRST_PACKET = "dutywatch-first"  # NFLOG prefix of a packet whose destination the kernel has just blocked
DEST_SIZE = 65536  # destinations the kernel blocks at most (past it a first packet goes out unblocked)
_ND = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert"


class NftError(Exception):
    """``nft`` refused a transaction or could not run; the message is its own."""


@dataclass(frozen=True, slots=True)
class Layout:
    """What the table keeps open: the management channel and the zones not forbidden."""

    listen_port: int | None = None
    management: tuple[IPNet, ...] = ()
    permitted: tuple[IPNet, ...] = ()
    log_group: int | None = None  # the agent's NFLOG group
    log_drops: bool = False  # new outgoing attempts the table drops are logged (preventive: each is a finding)
    first_packet: int | None = None  # seconds: the kernel blocks a forbidden destination at its first packet


@dataclass
class Elements:
    """The dynamic sets' content: set name ('dest', 'zone', 'wide', 'iso') -> {network: seconds left}."""

    sets: dict[str, dict[IPNet, float]] = field(default_factory=lambda: {k: {} for k in DYNAMIC})

    def add(self, name: str, net: IPNet, seconds: float) -> None:
        """Hold ``net`` in set ``name`` for ``seconds`` (the longest wins)."""
        cur = self.sets[name].get(net, 0.0)
        self.sets[name][net] = max(cur, seconds)


class Libnft:
    """libnftables (``libnftables.so.1``, the library behind ``nft``) in this process, through ctypes.

    A transaction costs what the kernel takes, not a process start; callers fall back to
    ``run_nft`` where the library is missing.
    """

    def __init__(self) -> None:
        import ctypes
        import ctypes.util
        import threading

        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        lib = ctypes.CDLL(name)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for fn in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
        for fn in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
            getattr(lib, fn).restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        self._lock = threading.Lock()
        self._ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)

    def __call__(self, script: str, *, json_out: bool = False, timeout: float = 10.0) -> str:
        """Run a script as ``nft -f`` would (``json_out``: ``nft -j``); NftError with libnftables' words."""
        lib = self._lib
        with self._lock:
            lib.nft_ctx_output_set_flags(self._ctx, 1 << 4 if json_out else 0)  # NFT_CTX_OUTPUT_JSON
            rc = lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            out = (lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
            err = (lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            raise NftError(err.strip() or f"libnftables returned {rc}")
        return out


def default_runner() -> Any:
    """libnftables in process where it loads, else the ``nft`` command."""
    try:
        return Libnft()
    except (OSError, AttributeError):
        return run_nft


def run_nft(script: str, *, json_out: bool = False, timeout: float = 10.0) -> str:
    """Run an ``nft -f -`` script (or ``nft -j`` with ``json_out``); NftError with nft's own words on failure."""
    argv = ["nft", "-j", "-f", "-"] if json_out else ["nft", "-f", "-"]
    if json_out and script.startswith("list "):
        argv = ["nft", "-j", *script.split()]
    try:
        r = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NftError(f"cannot run nft: {exc}") from exc
    if r.returncode != 0:
        raise NftError(r.stderr.strip() or f"nft exited with {r.returncode}")
    return r.stdout


def _collapse(nets: Iterable[IPNet], version: int) -> list[IPNet]:
    return list(ipaddress.collapse_addresses(n for n in nets if n.version == version))  # type: ignore[type-var]


def _elems(nets: Sequence[IPNet]) -> str:
    return ", ".join(_elem(n) for n in nets)


def _elem(n: IPNet) -> str:
    return str(n) if n.num_addresses > 1 else str(n.network_address)


def _secs(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _within(n: IPNet, c: IPNet) -> bool:
    return n.version == c.version and n.subnet_of(c)  # type: ignore[arg-type]


class NftTable:
    """One ``inet`` table the agent owns; ``run`` is how scripts reach the kernel (``run_nft``)."""

    def __init__(self, name: str, run: Any = None) -> None:
        self.name = name
        self.run = run if run is not None else default_runner()

    def install(self, layout: Layout) -> None:
        """Create the table, or replace it whole, in one transaction; the dynamic sets start empty."""
        t = self.name
        sets = []
        for v, typ in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            sets.append(f"  set mgmt{v} {{ type {typ}; flags interval; }}")
            sets.append(f"  set permit{v} {{ type {typ}; flags interval; }}")
            sets.append(f"  set dest{v} {{ type {typ}; flags dynamic, timeout; size {DEST_SIZE}; }}")
            for name in ("iso", "zone", "wide", "forbid"):
                sets.append(f"  set {name}{v} {{ type {typ}; flags interval, timeout; }}")
        out, inp = ['    oifname "lo" accept'], ['    iifname "lo" accept']
        if layout.listen_port:
            # Answers to scrapes only: a connection someone here opens from that port is not let out.
            out.append(f"    ct direction reply tcp sport {layout.listen_port} accept")
            inp.append(f"    ct direction original tcp dport {layout.listen_port} accept")
        out.append(f"    icmpv6 type {{ {_ND} }} accept")
        inp.append(f"    icmpv6 type {{ {_ND} }} accept")
        for chain, addr in ((out, "daddr"), (inp, "saddr")):
            # Outgoing drops go through ``refuse``, which logs new attempts (rate-limited) when asked.
            drop = "jump refuse" if chain is out else "counter drop"
            chain += [f"    ip {addr} @mgmt4 accept", f"    ip6 {addr} @mgmt6 accept"]
            for name in ("iso", "dest", "zone"):
                chain += [f"    ip {addr} @{name}4 {drop}", f"    ip6 {addr} @{name}6 {drop}"]
            chain += [f"    ip {addr} @permit4 accept", f"    ip6 {addr} @permit6 accept",
                      f"    ip {addr} @wide4 {drop}", f"    ip6 {addr} @wide6 {drop}"]
        if layout.first_packet and layout.log_group is not None:
            # Only packets of flows this host opened (answering a connection from outside is no offence),
            # sent by a program's socket (``meta skuid`` fails without one): the kernel's own leftovers of an
            # older flow (a TIME_WAIT ACK, a RST) carry no data and would block for no one.
            for fam in ("ip", "ip6"):
                v = 4 if fam == "ip" else 6
                out.append(f"    ct direction original meta skuid >= 0 {fam} daddr @forbid{v} add @dest{v} "
                           f"{{ {fam} daddr timeout {layout.first_packet}s }} "
                           f'log prefix "{FIRST_PACKET}" group {layout.log_group}')
        refuse = ["    counter drop"]
        if layout.log_group is not None and layout.log_drops:
            refuse.insert(0, f"    ct state new limit rate 200/second burst 400 packets log group {layout.log_group}")
        lines = [f"add table inet {t}", f"delete table inet {t}", f"table inet {t} {{",
                 '  comment "DutyWatch enforcement: lift with dutywatch enforce lift ID, remove with dutywatch '
                 'enforce release"', *sets,
                 "  chain refuse {", *refuse, "  }",
                 "  chain output {", "    type filter hook output priority 0; policy accept;", *out, "  }",
                 "  chain input {", "    type filter hook input priority 0; policy accept;", *inp, "  }", "}"]
        for v in (4, 6):
            for set_name, nets in (("mgmt", layout.management), ("permit", layout.permitted)):
                got = _collapse(nets, v)
                if got:
                    lines.append(f"add element inet {t} {set_name}{v} {{ {_elems(got)} }}")
        self.run("\n".join(lines) + "\n")

    def apply(self, elements: Elements) -> None:
        """Make the dynamic sets hold exactly ``elements``, atomically (lease renewals, zone changes, lifts)."""
        t = self.name
        lines = []
        for name in DYNAMIC:
            held = elements.sets[name]
            for v in (4, 6):
                lines.append(f"flush set inet {t} {name}{v}")
                mine = {n: sec for n, sec in held.items() if n.version == v}
                if name == "dest":
                    parts = [f"{_elem(n)} timeout {_secs(sec)}s" for n, sec in mine.items()]
                else:
                    parts = [f"{_elem(c)} timeout {_secs(max(sec for n, sec in mine.items() if _within(n, c)))}s"
                             for c in _collapse(mine, v)]
                if parts:
                    lines.append(f"add element inet {t} {name}{v} {{ {', '.join(parts)} }}")
        self.run("\n".join(lines) + "\n")

    def add(self, name: str, net: IPNet, seconds: float) -> None:
        """Put one element in a set (a new destination block: no rebuild)."""
        self.run(f"add element inet {self.name} {name}{net.version} {{ {_elem(net)} timeout {_secs(seconds)}s }}\n")

    def delete(self, name: str, net: IPNet) -> None:
        """Take one element out of a set."""
        self.run(f"delete element inet {self.name} {name}{net.version} {{ {_elem(net)} }}\n")

    def remove(self) -> bool:
        """Delete the table; False when there was none."""
        try:
            self.run(f"delete table inet {self.name}\n")
        except NftError as exc:
            if "No such file" in str(exc):
                return False
            raise
        return True

    def present(self) -> bool:
        """Whether the table exists."""
        try:
            self.run(f"list table inet {self.name}", json_out=True)
        except NftError:
            return False
        return True

    def listing(self) -> dict[str, list[str]]:
        """The elements of every set, as nft prints them (for ``enforce list`` and tests)."""
        out: dict[str, list[str]] = {}
        text = self.run(f"list table inet {self.name}", json_out=True)
        for item in json.loads(text or "{}").get("nftables", []):
            s = item.get("set")
            if not s:
                continue
            elems = []
            for e in s.get("elem", []):
                val = e.get("elem", {}).get("val") if isinstance(e, dict) and "elem" in e else e
                if isinstance(val, dict) and "prefix" in val:
                    val = f"{val['prefix']['addr']}/{val['prefix']['len']}"
                elems.append(str(val))
            out[s["name"]] = elems
        return out
