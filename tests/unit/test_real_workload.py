"""The real-shaped replay workload: its shape, and its planted events fire exactly their rules, the rest nothing.

The benchmark's precision figure rests on this: every planted event must
fire the rules computed for it independently (the reference matcher for
Sigma rules, the packs' conditions written out by hand), and no benign event
may fire anything, through the same replay the command runs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from agent.attribution import Attributor
from agent.commands.replay import replay
from agent.engine.engine import Engine
from agent.engine.rules import load_rules
from agent.paths import shipped_rules_dir
from agent.registry import load_registry
from tests.bench import real_workload
from tests.bench.sigma_workload import rule_dirs, vendor_root

ROOT = vendor_root()
needs_sigma = pytest.mark.skipif(ROOT is None, reason="the vendored Sigma rules (shared/vendor/sigma) are absent")


def _replay(path: Path, rules: list[Path]) -> dict[int, set[str]]:
    engine = Engine(load_rules(rules))
    attribute = Attributor(load_registry(real_workload.REGISTRY), lambda uid: None)
    fired: dict[int, set[str]] = {}
    with path.open("rb") as f:
        stats = replay(f, "w", engine, attribute, lambda rec: fired.setdefault(rec["line"], set()).add(rec["rule"]),
                       lambda line: pytest.fail(line))
    assert stats.bad == 0
    return fired


def test_the_mix_is_shaped_like_a_real_host(tmp_path: Path) -> None:
    w = real_workload.write_workload(tmp_path / "w.jsonl", 40_000, None)
    n = w.events - len(w.planted)
    assert 0.57 < w.execs / n < 0.63 and 0.22 < w.net / n < 0.28 and 0.12 < w.files / n < 0.18
    # About a third distinct at a million events (the benchmark prints it); a little more on fewer.
    assert 0.30 <= len(w.cmdlines) / w.execs <= 0.50
    assert w.cmdline_max <= 150
    assert len(w.remotes) > 0.15 * w.net  # a wide address space, not a handful of peers
    assert 0.4 < w.inner / w.net < 0.75  # about half the peers in the registry's zones
    assert w.service / n > 0.7  # mostly service accounts and root daemons
    lines = (tmp_path / "w.jsonl").read_bytes().splitlines()
    users = Counter(line.split(b'"user":"', 1)[1].split(b'"', 1)[0] for line in lines if b'"user":"' in line)
    registered = {p[1].encode() for p in real_workload.PEOPLE}
    assert sum(c for u, c in users.items() if u not in registered) > 0.7 * len(lines)
    # Mapped IPv4 and IPv6 peers are part of it, as dual-stack sockets report them.
    text = b"\n".join(lines)
    assert b'"remote_ip":"::ffff:' in text and b'"remote_ip":"fd00:10:' in text and b'"remote_ip":"240' in text


def test_the_same_seed_writes_the_same_events(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    real_workload.write_workload(a, 3000, None)
    real_workload.write_workload(b, 3000, None)
    assert a.read_bytes() == b.read_bytes()
    real_workload.write_workload(b, 3000, None, seed=23)
    assert a.read_bytes() != b.read_bytes()


def test_pack_violations_fire_exactly_their_pack_rules(tmp_path: Path) -> None:
    # Each hand-made violation, and an ordinary event beside it, through the shipped packs alone.
    path = tmp_path / "v.jsonl"
    cases = real_workload.pack_violations()
    import msgspec

    path.write_bytes(b"".join(msgspec.json.encode(ev) + b"\n" for ev, _ in cases))
    fired = _replay(path, [shipped_rules_dir()])
    assert {i: fired.get(i, set()) for i in range(1, len(cases) + 1)} == {
        i: set(ids) for i, (_, ids) in enumerate(cases, 1)}
    oracle = real_workload.PackOracle(shipped_rules_dir())
    assert [oracle.fired(ev) for ev, _ in cases] == [ids for _, ids in cases]


@needs_sigma
def test_planted_events_fire_exactly_their_rules_and_benign_ones_nothing(tmp_path: Path) -> None:
    assert ROOT is not None
    path = tmp_path / "w.jsonl"
    # A high planted share so that every planted event appears; the benign mix is the benchmark's.
    n = 30_000
    work = real_workload.Workload(events=n)
    with path.open("wb") as f:
        for lineno, (_, line, ids) in enumerate(real_workload.events(n, ROOT, planted_ratio=0.03), 1):
            f.write(line)
            if ids is not None:
                work.planted[lineno] = ids
    kinds = len(real_workload.planted_events(ROOT))
    assert len(set(work.planted.values())) > 100 and len(work.planted) > 3 * kinds
    fired = _replay(path, [shipped_rules_dir(), *rule_dirs(ROOT)])
    wrong = {line: (sorted(ids), sorted(fired.get(line, set()))) for line, ids in work.planted.items()
             if fired.get(line, set()) != ids}
    assert wrong == {}
    benign = {line: sorted(rules) for line, rules in fired.items() if line not in work.planted}
    assert benign == {}


def test_the_planted_share_is_found_by_precision(tmp_path: Path) -> None:
    # The benchmark's precision line counts a missed rule, an extra rule and a benign hit.
    from tests.bench.bench_sigma import precision

    work = real_workload.Workload(events=10, planted={2: frozenset({"A"}), 5: frozenset({"B", "C"})}, rules=3)
    found = tmp_path / "f.jsonl"
    found.write_text('{"line": 2, "rule": "A"}\n{"line": 5, "rule": "B"}\n{"line": 7, "rule": "Z"}\n'
                     '{"line": 2, "rule": "D"}\n', encoding="utf-8")
    line = precision(found, work)
    assert "planted 2 events (3 rules), 0 found with exactly their rules (1 missed a rule, 1 fired another)" in line
    assert "benign 8 events, 1 hits (Z)" in line
    found.write_text('{"line": 2, "rule": "A"}\n{"line": 5, "rule": "C"}\n{"line": 5, "rule": "B"}\n', encoding="utf-8")
    assert "2 found with exactly their rules (0 missed a rule, 0 fired another); benign 8 events, 0 hits" \
        in precision(found, work)


def test_without_sigma_rules_only_the_planted_pack_violations_fire(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    work = real_workload.Workload(events=20_000)
    with path.open("wb") as f:
        for lineno, (_, line, ids) in enumerate(real_workload.events(20_000, None, planted_ratio=0.01), 1):
            f.write(line)
            if ids is not None:
                work.planted[lineno] = ids
    assert len(work.planted) > 100
    fired = _replay(path, [shipped_rules_dir()])
    assert fired == {line: set(ids) for line, ids in work.planted.items()}
