"""A small classic-BPF assembler: socket filters built in code, attached with SO_ATTACH_FILTER.

The kernel runs a classic BPF program (``struct sock_filter`` array) on
every packet before it reaches a packet socket; what it returns is how many
bytes of the packet to keep (0: drop). Building the program here, rather
than compiling a tcpdump expression with libpcap, means the agent sniffs on
a host without libpcap. Jumps name labels; ``assemble`` resolves them to the
forward offsets the instruction set wants and refuses what the kernel would
refuse (a backward jump, one too far, a label used but not placed).
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

# Instruction classes, sizes, modes, operations (linux/filter.h, linux/bpf_common.h).
LD, LDX, ALU, JMP, RET, MISC = 0x00, 0x01, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MSH = 0x00, 0x20, 0x40, 0xA0
AND, RSH = 0x50, 0x70
JEQ, JGT, JGE, JSET = 0x10, 0x20, 0x30, 0x40
K, X = 0x00, 0x08
RET_A = 0x10

# Ancillary loads: offsets past SKF_AD_OFF read packet metadata instead of packet bytes.
SKF_AD_OFF = -0x1000
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4


@dataclass(frozen=True, slots=True)
class Insn:
    """One instruction; ``jt``/``jf`` are label names for conditional jumps (None: the next one)."""

    code: int
    k: int = 0
    jt: str | None = None
    jf: str | None = None


@dataclass(frozen=True, slots=True)
class Label:
    """A place in the program that jumps may name."""

    name: str


class BPFError(ValueError):
    """A program the kernel would refuse."""


def ld_abs(size: int, offset: int) -> Insn:
    """A <- packet[offset] (size W, H or B); a load past the end drops the packet."""
    return Insn(LD | size | ABS, offset)


def ld_ind(size: int, offset: int) -> Insn:
    """A <- packet[X + offset]."""
    return Insn(LD | size | IND, offset)


def ldx_msh(offset: int) -> Insn:
    """X <- 4 * (packet[offset] & 0xf): an IPv4 header's length."""
    return Insn(LDX | B | MSH, offset)


def ld_ancillary(what: int) -> Insn:
    """A <- packet metadata (SKF_AD_PKTTYPE, SKF_AD_PROTOCOL)."""
    return Insn(LD | W | ABS, (SKF_AD_OFF + what) & 0xFFFFFFFF)


def alu_and(k: int) -> Insn:
    """A <- A & k."""
    return Insn(ALU | AND | K, k)


def jeq(k: int, jt: str | None, jf: str | None = None) -> Insn:
    """Jump to ``jt`` when A == k, else to ``jf``."""
    return Insn(JMP | JEQ | K, k, jt, jf)


def jset(k: int, jt: str | None, jf: str | None = None) -> Insn:
    """Jump to ``jt`` when A & k, else to ``jf``."""
    return Insn(JMP | JSET | K, k, jt, jf)


def ret(k: int) -> Insn:
    """Keep ``k`` bytes of the packet (0: drop it)."""
    return Insn(RET | K, k)


def assemble(program: list[Insn | Label]) -> bytes:
    """The ``struct sock_filter`` array of a program with labels, as bytes."""
    places: dict[str, int] = {}
    insns: list[Insn] = []
    for item in program:
        if isinstance(item, Label):
            if item.name in places:
                raise BPFError(f"label {item.name!r} placed twice")
            places[item.name] = len(insns)
        else:
            insns.append(item)
    if not insns or insns[-1].code & 0x07 != RET:
        raise BPFError("a program must end with a return")
    if len(insns) > 4096:
        raise BPFError(f"{len(insns)} instructions: the kernel takes at most 4096")
    out = bytearray()
    for pc, insn in enumerate(insns):
        jt = _offset(places, pc, insn.jt)
        jf = _offset(places, pc, insn.jf)
        out += struct.pack("=HBBI", insn.code, jt, jf, insn.k & 0xFFFFFFFF)
    return bytes(out)


def _offset(places: dict[str, int], pc: int, label: str | None) -> int:
    if label is None:
        return 0
    if label not in places:
        raise BPFError(f"jump to unknown label {label!r}")
    off = places[label] - pc - 1
    if not 0 <= off <= 255:
        raise BPFError(f"jump from {pc} to {label!r} is {off}: classic BPF jumps forward, at most 255")
    return off


class Program:
    """An assembled program and the ``struct sock_fprog`` that points at it (keep this object alive)."""

    def __init__(self, code: bytes) -> None:
        """Hold ``code`` (from ``assemble``) where the kernel can read it."""
        self.length = len(code) // 8
        self._buf = ctypes.create_string_buffer(code, len(code))
        self.fprog = struct.pack("HL", self.length, ctypes.addressof(self._buf))
