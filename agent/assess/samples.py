"""The samples of a policy: roots built from YAML, the checks they must pass, fail or leave not applicable.

Every check of a shipped policy has at least one sample where it passes and
one where it fails; ``dutywatch assess --test`` and the test suite run them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.assess.context import HostContext
from agent.assess.evaluate import run_check
from agent.assess.policy import Check, PolicySet
from agent.errors import LoadError, Location, Problems
from agent.schema import expect_list, expect_map, str_list
from agent.yamlsrc import LDict, load_file

_EXPECT = {"pass": "pass", "fail": "fail", "not_applicable": "not_applicable"}


@dataclass
class Sample:
    """One sample: a root, changes to it, and the results expected of named checks."""

    name: str
    root: dict[str, Any]
    files: dict[str, Any]
    remove: tuple[str, ...]
    expect: dict[str, str]
    where: Location


@dataclass
class SampleReport:
    """What running the samples found."""

    passed: int = 0
    failed: list[str] = field(default_factory=list)
    covered: dict[str, set[str]] = field(default_factory=dict)


def load_samples(path: Path) -> list[Sample]:
    """Parse a samples file; LoadErrors name each mistake."""
    doc = load_file(path)
    p = Problems()
    top = expect_map(doc, Location(str(path), 1, 1), p, "samples file", required=("samples",), optional=("roots",))
    roots = top.get("roots", LDict()) if top is not None else {}
    out = []
    for i, s in enumerate(expect_list(top.get("samples"), top.at("samples"), p, "samples") or [] if top else []):
        m = expect_map(s, top.where if top else Location(str(path)), p, f"sample {i}", required=("name", "root"),
                       optional=("files", "remove", "pass", "fail", "not_applicable"))
        if m is None:
            continue
        root = roots.get(m.get("root")) if isinstance(roots, dict) else None
        if root is None:
            p.add(m.at("root"), f"unknown root {m.get('root')!r}")
            continue
        expect: dict[str, str] = {}
        for key, result in _EXPECT.items():
            for cid in str_list(m[key], m.at(key), p, key) if key in m else ():
                expect[cid] = result
        if not expect:
            p.add(m.where, "a sample names checks under pass:, fail: or not_applicable:")
        out.append(Sample(str(m["name"]), dict(root), dict(m.get("files") or {}),
                          str_list(m["remove"], m.at("remove"), p, "remove") if "remove" in m else (), expect,
                          m.where))
    p.raise_if_any()
    return out


def _write(base: str, path: str, spec: Any) -> None:
    target = base + path
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(target) and not os.path.isdir(target):
        os.unlink(target)
    if isinstance(spec, dict) and "link" in spec:
        os.symlink(str(spec["link"]), target)
        return
    if isinstance(spec, dict) and spec.get("dir"):
        os.makedirs(target, exist_ok=True)
    else:
        text = spec.get("text", "") if isinstance(spec, dict) else str(spec)
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)
    mode = int(str(spec.get("mode", "0644" if not spec.get("dir") else "0755")), 8) if isinstance(spec, dict) \
        else 0o644
    os.chmod(target, mode)
    if isinstance(spec, dict) and ("uid" in spec or "gid" in spec) and os.geteuid() == 0:
        os.chown(target, int(spec.get("uid", 0)), int(spec.get("gid", 0)))


@contextmanager
def built_root(sample: Sample) -> Iterator[str]:
    """The sample's root in a temporary directory, removed afterwards."""
    base = tempfile.mkdtemp(prefix="dw-assess-sample-")
    try:
        for path, spec in sample.root.items():
            if path not in sample.remove:
                _write(base, str(path), spec)
        for path, spec in sample.files.items():
            _write(base, str(path), spec)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_samples(policies: PolicySet, paths: list[Path]) -> SampleReport:
    """Run every sample against the named checks; a check without both a pass and a fail sample fails."""
    checks: dict[str, Check] = {c.id: c for c in policies.checks}
    rep = SampleReport()
    for path in paths:
        for s in load_samples(path):
            with built_root(s) as root:
                ctx = HostContext(root)
                for cid, want in s.expect.items():
                    c = checks.get(cid)
                    if c is None:
                        rep.failed.append(f"{s.where}: {s.name}: no check {cid}")
                        continue
                    got = run_check(c, ctx)
                    rep.covered.setdefault(cid, set()).add(got.result)
                    if got.result == want:
                        rep.passed += 1
                    else:
                        rep.failed.append(f"{s.where}: {s.name}: {cid} is {got.result}, expected {want}: "
                                          + "; ".join(got.evidence))
    for cid in checks:
        have = rep.covered.get(cid, set())
        for need in ("pass", "fail"):
            if need not in have:
                rep.failed.append(f"{checks[cid].where}: {cid} has no sample where it {need}es"
                                  if need == "pass" else f"{checks[cid].where}: {cid} has no sample where it fails")
    return rep


__all__ = ["LoadError", "SampleReport", "run_samples"]
