"""Random Sigma detections over set and unset fields: the engine agrees with the independent reference matcher.

The reference matcher (``tests/bench/sigma_workload.py``) evaluates the rule's
YAML straight from the specification, in three-valued logic, with none of the
engine's code; here both judge the same generated rules and events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import yaml
from bench.sigma_workload import reference_match
from hypothesis import given, settings

from agent.engine.engine import Engine
from agent.engine.rules import load_rules
from agent.events import Event, Parent, Process

FIELDS = ["Image", "ParentImage", "CommandLine", "User"]
MODIFIERS = ["", "|contains", "|startswith", "|endswith", "|re"]
VOCAB = ["/bin/bash", "/usr/sbin/sshd", "bash -i", "root", "ROOT", "/tmp/x", "", "sh"]
PATTERNS = ["/bin/bash", "sshd", "bash", "root", "/tmp/", "", "b*h", "sh"]
CONDITIONS = ["s0", "not s0", "s0 and not s1", "s0 or not s1", "(s0 or s1) and not s2", "not (s0 and s1)",
              "1 of s*", "all of them", "s0 and not 1 of s*", "not not s1", "s0 and s1 or not s2"]


def event_of(fields: dict[str, Any]) -> Event:
    """A process.exec event carrying exactly these Sigma fields, every other one unset."""
    return Event("process.exec", process=Process(exe=fields.get("Image"), cmdline=fields.get("CommandLine"),
                                                 user=fields.get("User")),
                 parent=Parent(exe=fields.get("ParentImage")))


@st.composite
def detections(draw: st.DrawFn) -> dict[str, Any]:
    det: dict[str, Any] = {}
    for i in range(3):
        keys = draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=2, unique=True))
        mapping: dict[str, Any] = {}
        for k in keys:
            mod = draw(st.sampled_from(MODIFIERS))
            values = draw(st.lists(st.sampled_from([*PATTERNS, None]) if mod == "" else st.sampled_from(PATTERNS),
                                   min_size=1, max_size=2))
            mapping[k + mod] = values if len(values) > 1 else values[0]
        det[f"s{i}"] = mapping
    det["condition"] = draw(st.sampled_from(CONDITIONS))
    return det


@settings(max_examples=150, deadline=None)
@given(detections(), st.lists(st.fixed_dictionaries({}, optional={f: st.sampled_from(VOCAB) for f in FIELDS}),
                              min_size=1, max_size=8))
def test_engine_agrees_with_the_reference_matcher(tmp_path_factory: pytest.TempPathFactory, det: dict[str, Any],
                                                  events: list[dict[str, Any]]) -> None:
    doc = {"title": "generated", "id": "5d1bfa2b-0000-4000-8000-0000000000ff",
           "logsource": {"product": "linux", "category": "process_creation"}, "detection": det, "level": "low"}
    d = tmp_path_factory.mktemp("sigma")
    (d / "r.yml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    engine = Engine(load_rules([d]))
    for fields in events:
        assert bool(engine.match(event_of(fields))) == reference_match(doc, fields), (det, fields)


def test_generated_rules_exercise_both_outcomes(tmp_path: Path) -> None:
    """The property above is not vacuous: the same rule fires on one event and not on another."""
    doc = {"title": "t", "id": "5d1bfa2b-0000-4000-8000-0000000000fe",
           "logsource": {"product": "linux", "category": "process_creation"},
           "detection": {"s0": {"Image|endswith": "bash"}, "s1": {"User": "root"}, "condition": "s0 and not s1"}}
    (tmp_path / "r.yml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    engine = Engine(load_rules([tmp_path]))
    for fields, expected in (({"Image": "/bin/bash", "User": "alice"}, True), ({"Image": "/bin/bash"}, False),
                             ({"Image": "/bin/bash", "User": "ROOT"}, False)):
        assert bool(engine.match(event_of(fields))) is expected
        assert reference_match(doc, fields) is expected
