"""Indexed lookups give the same rules however often, and in whatever order, values recur."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.engine import engine as engine_module
from agent.engine.engine import Engine
from agent.engine.expr import _anchored, literal_search
from agent.engine.rules import load_rules
from agent.events import Event, Process

PACK = """\
pack: p
rules:
  - id: SH
    title: {zh: 标题, en: title}
    when: "endswith(lower(process.exe), '/sh')"
    severity: high
    action: alert
    message: {zh: z, en: e}
  - id: CURL
    title: {zh: 标题, en: title}
    when: "contains(lower(process.cmdline), 'curl ')"
    severity: high
    action: alert
    message: {zh: z, en: e}
"""


def _ids(engine: Engine, exe: str, cmdline: str) -> set[str]:
    return {r.id for r in engine.match(Event("process.exec", process=Process(exe=exe, cmdline=cmdline)))}


@pytest.mark.parametrize("limit", [8, 4096])
def test_recurring_values_match_the_same_after_many_distinct_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   limit: int) -> None:
    monkeypatch.setattr(engine_module, "_CACHE_LIMIT", limit)
    (tmp_path / "p.yaml").write_text(PACK, encoding="utf-8")
    engine = Engine(load_rules([tmp_path]))
    assert _ids(engine, "/bin/SH", "CURL x") == {"SH", "CURL"}
    # Enough distinct values to fill and empty the remembered lookups more than once.
    for i in range(10_000):
        expected = {"SH"} if i % 3 == 0 else set()
        assert _ids(engine, f"/opt/{i}/sh" if i % 3 == 0 else f"/opt/{i}/ls", f"run {i}") == expected
    assert _ids(engine, "/bin/SH", "CURL x") == {"SH", "CURL"}
    assert _ids(engine, "/bin/ls", "ls") == set()


def test_values_that_keep_coming_are_answered_the_same_through_both_generations(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A small table: values that recur move from the old generation back to the new one while
    # one-off values push generations out; every answer must stay the value's own.
    monkeypatch.setattr(engine_module, "_CACHE_LIMIT", 5)
    (tmp_path / "p.yaml").write_text(PACK, encoding="utf-8")
    engine = Engine(load_rules([tmp_path]))
    hot = [("/bin/sh", "curl a", {"SH", "CURL"}), ("/bin/ls", "ls", set()), ("/usr/bin/dash", "x curl y", {"CURL"})]
    for i in range(3_000):
        exe, cmd, expected = hot[i % 3]
        assert _ids(engine, exe, cmd) == expected
        if i % 2:
            assert _ids(engine, f"/opt/{i}/{'sh' if i % 4 == 1 else 'ls'}", f"one-off {i}") == (
                {"SH"} if i % 4 == 1 else set())


def test_long_values_are_looked_up_every_time(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PACK, encoding="utf-8")
    engine = Engine(load_rules([tmp_path]))
    long = "x" * 5_000 + " curl http://a"
    for _ in range(3):
        assert _ids(engine, "/usr/bin/bash", long) == {"CURL"}
        assert _ids(engine, "/usr/bin/bash", "x" * 5_000) == set()


# -- indexed string tests agree with evaluating every rule --------------------

import hypothesis.strategies as st  # noqa: E402
from hypothesis import given, settings  # noqa: E402

PIECES = ["/usr/bin/", "/tmp/", "sh", "SH", "-W", "-R", "curl ", "x", "/", " -c", "a.conf", ""]
TESTS = [
    "startswith({f}, '/tmp/')", "startswith(lower({f}), '/usr/bin/', '/tmp/x')", "endswith({f}, '/sh')",
    "endswith(lower({f}), 'sh', 'a.conf')", "contains(lower({f}), 'curl ', ' -c')", "contains({f}, 'SH')",
    "lower({f}) == 'sh'", "{f} in ('x', '/tmp/sh')", "regex({f}, '-(W|R)')", "regex(lower({f}), '(sh|curl) ')",
    "regex({f}, '[WR]x?/')", "glob({f}, '/usr/bin/*')",
]


@st.composite
def string_rules(draw: st.DrawFn) -> list[str]:
    out = []
    for _ in range(draw(st.integers(1, 12))):
        parts = [draw(st.sampled_from(TESTS)).format(f=draw(st.sampled_from(["process.exe", "process.cmdline"])))
                 for _ in range(draw(st.integers(1, 3)))]
        joiner = draw(st.sampled_from([" and ", " or "]))
        out.append(joiner.join(parts))
    return out


values = st.lists(st.sampled_from(PIECES), max_size=5).map("".join)


@settings(max_examples=80, deadline=None)
@given(string_rules(), st.lists(st.tuples(values, values | st.none()), min_size=1, max_size=40))
def test_indexed_string_tests_equal_brute_force(tmp_path_factory: pytest.TempPathFactory, conds: list[str],
                                                evs: list[tuple[str, str | None]]) -> None:
    d = tmp_path_factory.mktemp("rules")
    rules = "".join(f"  - id: R{i}\n    title: {{zh: t, en: t}}\n    when: \"{c}\"\n    severity: low\n"
                    f"    action: alert\n    message: {{zh: z, en: e}}\n" for i, c in enumerate(conds))
    (d / "p.yaml").write_text("pack: p\nrules:\n" + rules, encoding="utf-8")
    ruleset = load_rules([d])
    engine = Engine(ruleset)
    for _ in range(2):  # the second pass meets every value again, from the remembered lookups
        for exe, cmdline in evs:
            e = Event("process.exec", process=Process(exe=exe, cmdline=cmdline))
            assert sorted(r.id for r in engine.match(e)) == sorted(r.id for r in ruleset.rules if r.test(e)), e


def test_a_regex_with_alternatives_is_reached_through_the_index(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PACK.replace("contains(lower(process.cmdline), 'curl ')",
                                                  "regex(process.cmdline, '-(W|R)[ ]?[0-9a-f]{2}')"),
                                     encoding="utf-8")
    engine = Engine(load_rules([tmp_path]))
    # Indexed, not evaluated on every event: only the shell rule and this one exist, both behind indexes.
    assert not engine._buckets["process.exec"].linear
    assert _ids(engine, "/bin/ls", "xxd -W 4f") == {"CURL"}
    assert _ids(engine, "/bin/ls", "xxd -R4f") == {"CURL"}
    assert _ids(engine, "/bin/ls", "xxd -w 4f") == set()
    assert _ids(engine, "/bin/ls", "xxd -W zz") == set()


def test_a_rule_that_fails_on_a_value_hides_no_other_finding(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PACK + """\
  - id: PID
    title: {zh: 标题, en: title}
    when: "process.pid == 5"
    severity: high
    action: alert
    message: {zh: z, en: e}
""", encoding="utf-8")
    engine = Engine(load_rules([tmp_path]))
    # A number where text belongs (an event built in code, not decoded): lower() fails on it.
    odd = Event("process.exec", process=Process(pid=5, exe=5, cmdline="curl x"))  # type: ignore[arg-type]
    assert {r.id for r in engine.match(odd)} == {"PID", "CURL"}
    assert engine.errors == 1
    assert {r.id for r in engine.match(Event("process.exec", process=Process(pid=5, exe="/bin/sh")))} == {"SH", "PID"}


# -- the literal scan: whatever the literals, "holds one of them" and nothing else --------

# Characters the anchors are chosen from (common, rare, regex syntax, non-ASCII) and the literals' pieces.
ALPHABET = " e/t-.=>|'\"x:0zRW(\\)[*+?$^{}\u5bc6\n"
LITERALS = st.lists(st.text(ALPHABET, min_size=1, max_size=8), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(LITERALS, st.lists(st.text(ALPHABET, max_size=40), min_size=1, max_size=20))
def test_literal_scan_finds_exactly_the_values_holding_a_literal(literals: list[str], texts: list[str]) -> None:
    search = literal_search(literals)
    # Values built from the literals themselves, cut and joined, reach the look-arounds' edges.
    for text in [*texts, *literals, "".join(literals), *(lit[:-1] + lit[1:] for lit in literals)]:
        assert (search(text) is not None) == any(lit in text for lit in literals), (literals, text)


def test_literal_scan_of_many_first_characters_is_anchored_on_rare_ones() -> None:
    # Two dozen literals that start with different common letters: the scan finds each one from its
    # rarest character, in any position, and nothing in a near miss that lacks one character of it.
    literals = ["disable", "spawn", "sh -c", "chown root", "base64 ", "http_proxy=", "os.system(", "fsockopen",
                "tcpsocket", "journalctl --vacuum", "' x:0:'", "stratum+tcp://", "nc -e", "wget ", "curl|"]
    assert "(?<=" in _anchored(literals)
    search = literal_search(literals)
    for lit in literals:
        for text in (lit, f"a {lit}", f"{lit} z", f"/usr/bin/{lit}/{lit}"):
            assert search(text) is not None, text
        for cut in range(len(lit)):
            near = lit[:cut] + lit[cut + 1:]
            assert (search(near) is not None) == any(other in near for other in literals), near
    assert search("php /srv/app/artisan queue:work --tries=3") is None


def test_repeating_fields_looked_up_together_find_the_same_rules_in_the_same_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Program, parent, directory and zones are looked up by the tuple of their values. On real-shaped
    # events (planted ones among them, so that rules fire) and with tables small enough to turn over
    # many times, every event must meet the same rules, in the same order, as with each field on its own.
    from agent.attribution import Attributor
    from agent.events import EventDecoder
    from agent.paths import shipped_rules_dir
    from agent.registry import load_registry
    from tests.bench import real_workload
    from tests.bench.sigma_workload import rule_dirs, vendor_root

    root = vendor_root()
    if root is None:
        pytest.skip("the vendored Sigma rules are not here")
    rs = load_rules([shipped_rules_dir(), *rule_dirs(root)])
    attribute = Attributor(load_registry(real_workload.REGISTRY), lambda uid: None, lambda exe, pid: None)
    decode = EventDecoder(attribute.build).decode
    evs = [decode(line) for _, line, _ in real_workload.events(6000, root, planted_ratio=0.05)]
    monkeypatch.setattr(engine_module, "_CACHE_LIMIT", 16)
    together = Engine(rs)
    monkeypatch.setattr(engine_module, "_REPEATING", frozenset())
    alone = Engine(rs)
    fired = 0
    for e in evs:
        want = [r.id for r in alone.match(e)]
        assert [r.id for r in together.match(e)] == want, e
        fired += bool(want)
    assert fired > 100
    # ... and the lookup together did take place (each bucket's matcher keeps its tables in its globals).
    assert any(name.startswith("runcache") for m in together.matchers().values() for name in m.__globals__)
    assert not any(name.startswith("runcache") for m in alone.matchers().values() for name in m.__globals__)
