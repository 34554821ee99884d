"""Hostile input to every loader: only the project's own errors escape, always with a place.

Hypothesis drives generated YAML files through the rule, registry and config
loaders and generated expression text (token soup and random syntax trees
rendered back to text) through the ``when`` compiler. `make test` runs a
few hundred cases per target; `make fuzz` sets DW_FUZZ_EXAMPLES=10000.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import load_config
from agent.engine.expr import Scope, compile_when
from agent.engine.rules import load_rules
from agent.errors import LoadError, LoadErrors, Location
from agent.registry import load_registry
from agent.yamlsrc import load_text

EXAMPLES = int(os.environ.get("DW_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 1000,
                suppress_health_check=list(HealthCheck))

RULE_KEYS = ["id", "title", "when", "severity", "action", "accountable", "controls", "message", "tags", "enabled",
             "zh", "en", "lists", "macros", "rules", "pack", "sigma", "logsource", "detection", "condition"]
REG_KEYS = ["host", "id", "unit", "department", "custodian", "level", "zone", "departments", "units", "people",
            "account", "uid", "name", "clearance", "zones", "default", "networks", "cidrs", "assets", "path",
            "media", "serial", "holder"]
CFG_KEYS = ["registry", "rules", "state_dir", "listen", "web_config", "queue_size", "collectors", "journal",
            "forward", "sigma", "report", "process", "network", "files", "media", "host", "enabled", "mode",
            "interval", "paths", "roots", "retention_days", "syslog", "address", "tls", "font"]
WORDS = ["event.kind", "process.exe", "process.uid", "operator.known", "file.level", "host.level", "==", "!=", "in",
         "and", "or", "not", "(", ")", "[", "]", ",", "startswith", "endswith", "contains", "matches", "None", "True",
         "\"/tmp/\"", "'x'", "0", "-1", "1e308", "secret", "top_secret", "exec", "temp_dirs", "len", "lower", "x.y",
         "__class__", "__import__", "lambda", "**", "if", "else", ":", ";", "\\", "\"unterminated", "1_000", "@",
         "process.uid >", "<=", "~", "//", "%", "{", "}", "é", "机密", "\x00", "\n", "\t"]


def leaves(keys: list[str]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                        st.text(max_size=40), st.sampled_from(keys), st.sampled_from(WORDS),
                        st.sampled_from(["secret", "high", "alert", "process.exec", "/srv/**", "10.0.0.0/8",
                                         "127.0.0.1:0", "[", "**/*", "5m", "-1s", "tcp://x:1"]))
    return st.recursive(scalars, lambda kids: st.one_of(
        st.lists(kids, max_size=5), st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=8)), kids,
                                                    max_size=6)), max_leaves=30)


def documents(keys: list[str]) -> st.SearchStrategy[str]:
    """YAML text: dumps of random structures, mangled dumps, and raw text."""
    def dump(obj: Any) -> str:
        return yaml.safe_dump(obj, allow_unicode=True)
    dumped = leaves(keys).map(dump)
    mangled = st.tuples(dumped, st.integers(0, 400), st.text(max_size=12)).map(
        lambda t: t[0][:t[1]] + t[2] + t[0][t[1]:])
    raw = st.text(alphabet=st.sampled_from([*"{}[]:,-&*!|>'\"%@`#? \n\tab1é机", "\x00", "\ufeff"]), max_size=200)
    fixed = ["", "---\n---\n", "a: &x [*x]\n", "!!python/object:os.system {}\n", "a: " + "[" * 5000, "k: v\n" * 3]
    return st.one_of(dumped, mangled, raw, st.sampled_from(fixed))


def must_be_clean(exc: BaseException, path: str) -> None:
    assert isinstance(exc, (LoadError, LoadErrors)), f"{type(exc).__name__} escaped: {exc!r}"
    errors = exc.errors if isinstance(exc, LoadErrors) else [exc]
    assert errors, "LoadErrors with no errors"
    for e in errors:
        assert str(e.where).startswith(path) or e.where.path, f"no location: {e}"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the module's generated files (pytest's own temp tree, so nothing is left behind in /tmp)."""
    return tmp_path_factory.mktemp("fuzz")


def run_loader(fn: Any, text: str, p: Path) -> None:
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        fn(p)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        must_be_clean(exc, str(p))


@FUZZ
@given(documents(RULE_KEYS))
def test_rule_loader(work: Path, text: str) -> None:
    run_loader(lambda p: load_rules([p]), text, work / "rules.yaml")


@FUZZ
@given(documents(REG_KEYS))
def test_registry_loader(work: Path, text: str) -> None:
    run_loader(load_registry, text, work / "registry.yaml")


@FUZZ
@given(documents(CFG_KEYS))
def test_config_loader(work: Path, text: str) -> None:
    run_loader(load_config, text, work / "agent.yaml")


NAMES = st.sampled_from(["event", "process", "file", "host", "operator", "temp_dirs", "exec", "x", "__builtins__"])
ATTRS = st.sampled_from(["kind", "exe", "uid", "level", "known", "name", "path", "__class__", "zone"])


def exprs() -> st.SearchStrategy[ast.expr]:
    base = st.one_of(
        NAMES.map(lambda n: ast.Name(n, ast.Load())),
        st.tuples(NAMES, ATTRS).map(lambda t: ast.Attribute(ast.Name(t[0], ast.Load()), t[1], ast.Load())),
        st.one_of(st.integers(-10**20, 10**20), st.text(max_size=10), st.none(), st.booleans(),
                  st.floats(allow_nan=False)).map(ast.Constant))
    cmp_ops = st.sampled_from([ast.Eq(), ast.NotEq(), ast.Lt(), ast.GtE(), ast.In(), ast.NotIn(), ast.Is()])

    def extend(kids: st.SearchStrategy[ast.expr]) -> st.SearchStrategy[ast.expr]:
        return st.one_of(
            st.tuples(st.sampled_from([ast.And(), ast.Or()]), st.lists(kids, min_size=2, max_size=3)).map(
                lambda t: ast.BoolOp(t[0], t[1])),
            kids.map(lambda k: ast.UnaryOp(ast.Not(), k)),
            st.tuples(kids, cmp_ops, kids).map(lambda t: ast.Compare(t[0], [t[1]], [t[2]])),
            st.tuples(st.sampled_from(["startswith", "len", "lower", "matches", "eval", "cidr"]),
                      st.lists(kids, max_size=3)).map(lambda t: ast.Call(ast.Name(t[0], ast.Load()), t[1], [])),
            st.lists(kids, max_size=3).map(lambda xs: ast.Tuple(xs, ast.Load())),
            st.tuples(kids, st.sampled_from([ast.Add(), ast.Pow(), ast.Mod()]), kids).map(
                lambda t: ast.BinOp(t[0], t[1], t[2])),
            st.tuples(kids, kids).map(lambda t: ast.Subscript(t[0], t[1], ast.Load())),
        )
    return st.recursive(base, extend, max_leaves=12)


def when_texts() -> st.SearchStrategy[str]:
    soup = st.lists(st.sampled_from(WORDS), max_size=15).map(" ".join)
    trees = exprs().map(lambda e: ast.unparse(ast.fix_missing_locations(e)))
    return st.one_of(soup, trees, st.text(max_size=60), st.just("(" * 3000 + "1" + ")" * 3000),
                     st.just(" and ".join(["event.kind == 'x'"] * 3000)), st.just("not " * 200 + "True"))


@FUZZ
@given(when_texts())
def test_when_compiler(text: str) -> None:
    scope = Scope({"temp_dirs": ("/tmp/", "/dev/shm/")}, {"exec": ("event.kind == 'process.exec'",
                                                                   Location("pack.yaml", 3, 9))})
    try:
        compile_when(text, Location("fuzz.yaml", 7, 11), scope)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        assert isinstance(exc, LoadError), f"{type(exc).__name__} escaped for {text[:200]!r}: {exc!r}"
        assert str(exc.where).startswith("fuzz.yaml:") or str(exc.where).startswith("pack.yaml:"), str(exc)


LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))


def test_yaml_bombs_are_load_errors_with_a_place(work: Path) -> None:
    for name, text in (("deep", "a: " + "[" * 5000), ("self", "a: &x [*x]\n"), ("laughs", LAUGHS)):
        for fn in (lambda p: load_rules([p]), load_registry, load_config):
            p = work / f"{name}.yaml"
            p.write_text(text)
            try:
                fn(p)
            except (LoadError, LoadErrors) as exc:
                assert str(p) in str(exc)
            else:
                raise AssertionError(f"{name} loaded")


def test_aliases_and_merge_keys_within_the_limit_still_load() -> None:
    # The near miss beside the bombs: four levels of ten aliases (11,111 values) and a merge key are ordinary YAML.
    text = LAUGHS.split("e: ")[0] + "base: &base {x: 1}\nmerged: {<<: *base, y: 2}\n"
    doc = load_text(text, "aliases.yaml")
    assert len(doc["d"]) == 10 and doc["d"][9][9][9] == ["x"] * 10
    assert dict(doc["merged"]) == {"x": 1, "y": 2}
    with pytest.raises(LoadError, match="expands to more than"):
        load_text(LAUGHS, "laughs.yaml")


@pytest.mark.parametrize("text", ["not " * 5000 + "True", "-" * 5000 + "1"], ids=["not-chain", "minus-chain"])
def test_when_compiler_deep_unary_chain(text: str) -> None:
    with pytest.raises(LoadError) as info:
        compile_when(text, Location("fuzz.yaml", 7, 11), Scope({}, {}))
    assert str(info.value.where).startswith("fuzz.yaml:7:")
    assert "nested too deeply" in info.value.message
