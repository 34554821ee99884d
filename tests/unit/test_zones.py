"""Zone lookup: integer parsing and a prefix table give ``ipaddress``'s answers, for every form of address.

The reference here is written with ``ipaddress`` alone: the longest network
of the registry that contains the address (an IPv4-mapped IPv6 address
counts as its IPv4 address), the default when none does, None for text that
is not an address (after dropping a ``%scope``).
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.registry import IPNetwork, ZoneMap

NETWORKS: list[tuple[str, IPNetwork]] = [
    (name, ipaddress.ip_network(cidr)) for name, cidr in (
        ("intranet", "10.0.0.0/8"), ("dmz", "10.250.0.0/16"), ("ops", "10.250.7.0/24"), ("host", "10.250.7.9/32"),
        ("extranet", "172.16.0.0/12"), ("management", "192.168.0.0/16"), ("loopback", "127.0.0.0/8"),
        ("everything", "0.0.0.0/1"), ("odd", "203.0.113.128/25"),
        ("intranet", "fd00:10::/32"), ("dmz", "fd00:10:fa::/48"), ("loopback", "::1/128"),
        ("linklocal", "fe80::/10"), ("v6host", "2001:db8::7/128"), ("v6all", "8000::/1"),
        # An IPv6 network over the mapped range: a mapped address still takes its IPv4 zone.
        ("mapped-range", "::ffff:0:0/96"),
    )
]
ZONES = ZoneMap("internet", NETWORKS)


def reference(text: str) -> str | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    best: tuple[int, str] | None = None
    for name, net in NETWORKS:
        if addr.version == net.version and addr in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, name)
    return best[1] if best is not None else "internet"


def _near(net: IPNetwork, offset: int) -> str:
    """An address at ``offset`` from the network's first address (either side of its edges)."""
    top = 2**net.max_prefixlen - 1
    value = min(max(int(net.network_address) + offset, 0), top)
    return str(ipaddress.ip_address(value) if net.version == 4 else ipaddress.IPv6Address(value))


v4 = st.integers(0, 2**32 - 1).map(lambda n: ipaddress.IPv4Address(n))
v6 = st.integers(0, 2**128 - 1).map(lambda n: ipaddress.IPv6Address(n))
edges = st.builds(_near, st.sampled_from([n for _, n in NETWORKS]),
                  st.one_of(st.integers(-3, 3), st.sampled_from([255, 256, 2**16 - 1, 2**16, 2**20, 2**24])))


@st.composite
def spellings(draw: st.DrawFn) -> str:
    """One address written as a host or a collector could: dotted, compressed, exploded, mapped, scoped."""
    choice = draw(st.integers(0, 6))
    if choice == 0:
        return str(draw(v4))
    if choice == 1:
        return draw(edges)
    a6 = draw(v6)
    if choice == 2:
        return a6.compressed
    if choice == 3:
        return a6.exploded if draw(st.booleans()) else a6.exploded.upper()
    a4 = draw(v4)
    if choice == 4:  # IPv4-mapped, in the forms dual-stack sockets and tools print
        return draw(st.sampled_from([f"::ffff:{a4}", f"::FFFF:{a4}", f"0:0:0:0:0:ffff:{a4}",
                                     ipaddress.IPv6Address(f"::ffff:{a4}").exploded, f"::{a4}", f"64:ff9b::{a4}"]))
    if choice == 5:
        host = draw(st.sampled_from([a6.compressed, str(a4), "fe80::1"]))
        return f"{host}%{draw(st.sampled_from(['eth0', '2', '']))}"
    if draw(st.booleans()):
        return draw(edges)
    return _near(ipaddress.ip_network("::ffff:0:0/96"), draw(st.integers(0, 2**32 - 1)))


# Text that is almost an address: the parser must refuse exactly what ipaddress refuses.
junk = st.text(alphabet="0123456789abcdefABCDEF:.%x /\n\x00١", max_size=45)


@settings(max_examples=1000, deadline=None)
@given(spellings())
def test_every_spelling_of_an_address_gets_ipaddress_zone(text: str) -> None:
    assert ZONES.lookup(text) == reference(text)


@settings(max_examples=1000, deadline=None)
@given(junk)
def test_text_that_is_not_quite_an_address_gets_the_same_answer(text: str) -> None:
    assert ZONES.lookup(text) == reference(text)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=4), v4)
def test_mutated_dotted_quads(edits: list[int], addr: ipaddress.IPv4Address) -> None:
    # Leading zeros, missing or extra parts, octets over 255: refused as ipaddress refuses them.
    parts = str(addr).split(".")
    for e in edits:
        if e == 0:
            parts[0] = "0" + parts[0]
        elif e == 1 and len(parts) > 2:
            parts = parts[:-1]
        elif e == 2:
            parts.append("1")
        elif e == 3:
            parts[-1] = str(int(parts[-1] or 0) + 256)
        elif e == 4:
            parts[1] = parts[1] + " "
    text = ".".join(parts)
    assert ZONES.lookup(text) == reference(text)


def test_known_answers() -> None:
    # Written out, so that a reference gone wrong cannot hide a wrong lookup.
    cases = {
        "10.1.2.3": "intranet", "10.250.1.1": "dmz", "10.250.7.1": "ops", "10.250.7.9": "host",
        "::ffff:10.250.7.9": "host", "::ffff:172.20.1.1": "extranet", "172.32.0.1": "internet",
        "100.1.2.3": "everything",        "200.1.1.1": "internet", "203.0.113.129": "odd", "203.0.113.127": "internet",
        "fd00:10:fa::1": "dmz", "FD00:0010:0000::1": "intranet", "::1": "loopback", "fe80::1%eth0": "linklocal",
        "2001:db8::7": "v6host", "2001:db8::8": "internet", "ffff::1": "v6all",
        "::ffff:0:1": "everything",  # mapped 0.0.0.1
        "010.1.2.3": None, "1.2.3": None, "1.2.3.256": None, "": None, "x": None, "::ffff:1.2.3.04": None,
        "1.2.3.4 ": None, "fe80::1%": "linklocal",
    }
    assert {t: ZONES.lookup(t) for t in cases} == cases


def test_a_registry_without_networks_answers_the_default() -> None:
    z = ZoneMap("internet", [])
    assert (z.lookup("10.0.0.1"), z.lookup("::1"), z.lookup("nope")) == ("internet", "internet", None)
