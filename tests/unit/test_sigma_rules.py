"""The vendored SigmaHQ Linux rules in DutyWatch's engine: they compile, and fire exactly where they should.

For every rule, an event built from the rule's own selections must fire it,
the same event with one field changed (a near miss) must not, and the engine
must agree with an independent reference matcher on case-swapped variants.
The rules are read from the shared vendor tree, never copied into the repo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bench.sigma_workload import (
    case_swapped,
    load_doc,
    near_miss,
    reference_match,
    rule_dirs,
    rule_files,
    to_event,
    vendor_root,
    witness,
)

from agent.attribution import Attributor
from agent.engine.engine import Engine
from agent.engine.rules import RuleSet, load_rules
from agent.events import Event
from agent.paths import DEMO_REGISTRY, shipped_rules_dir
from agent.registry import load_registry

ROOT = vendor_root()
pytestmark = pytest.mark.skipif(ROOT is None, reason="the vendored Sigma rules (shared/vendor/sigma) are not "
                                                     "beside the repository nor at /work/shared")


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    assert ROOT is not None
    return load_rules([shipped_rules_dir(), *rule_dirs(ROOT)])


@pytest.fixture(scope="module")
def engine(ruleset: RuleSet) -> Engine:
    return Engine(ruleset)


@pytest.fixture(scope="module")
def attribute() -> Attributor:
    return Attributor(load_registry(DEMO_REGISTRY), lambda uid: None)


def _docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(f, load_doc(f)) for f in rule_files(ROOT)] if ROOT is not None else []


DOCS = _docs()


def test_every_vendored_rule_compiles(ruleset: RuleSet) -> None:
    sigma = [r for r in ruleset.rules if r.pack == "sigma"]
    assert len(DOCS) == 135
    assert len(sigma) == 135  # the issue asks for at least 125
    assert {r.id for r in sigma} == {d["id"] for _, d in DOCS}
    assert all(r.controls == ("GB/T 22239-2019 8.1.4.4",) and r.action == "alert" for r in sigma)


def test_category_restricts_kinds(ruleset: RuleSet) -> None:
    by_id = ruleset.by_id()
    allowed = {"process_creation": {"process.exec"}, "network_connection": {"net.connect", "net.accept"},
               "file_event": {"file.create", "file.write", "file.rename"}}
    for _, doc in DOCS:
        rule = by_id[doc["id"]]
        assert rule.kinds and rule.kinds <= allowed[doc["logsource"]["category"]], doc["title"]


def _fired(engine: Engine, attribute: Attributor, ev: dict[str, Any]) -> set[str]:
    return {r.id for r in engine.match(attribute(Event.from_dict(ev)))}


@pytest.mark.parametrize(("path", "doc"), DOCS, ids=[p.stem for p, _ in DOCS])
def test_rule_fires_on_its_selection_and_not_on_a_near_miss(path: Path, doc: dict[str, Any], engine: Engine,
                                                            attribute: Attributor) -> None:
    category = doc["logsource"]["category"]
    fields = witness(doc)
    assert fields is not None, "no event could be built from the rule's selections"
    assert doc["id"] in _fired(engine, attribute, to_event(category, fields))
    if category == "file_event":  # a rename is matched on the name it creates
        assert doc["id"] in _fired(engine, attribute, to_event(category, fields, rename=True))
    miss = near_miss(doc, fields)
    assert miss is not None
    assert doc["id"] not in _fired(engine, attribute, to_event(category, miss))
    swapped = case_swapped(fields)
    assert (doc["id"] in _fired(engine, attribute, to_event(category, swapped))) == reference_match(doc, swapped)


def test_unrelated_kinds_never_fire_sigma_rules(engine: Engine, attribute: Attributor) -> None:
    # The same process fields on a file open (no Sigma category) fire nothing from Sigma.
    for _, doc in DOCS:
        if doc["logsource"]["category"] != "process_creation":
            continue
        fields = witness(doc)
        assert fields is not None
        ev = to_event("process_creation", fields)
        ev["event"]["kind"] = "process.exit"
        assert doc["id"] not in _fired(engine, attribute, ev)
