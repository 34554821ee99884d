"""People in reports by name from the registry: the custodian and media holder are not left as bare accounts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from agent.attribution import Attributor
from agent.engine.engine import Engine, Finding
from agent.events import Event
from agent.journal.store import Journal
from agent.packages import no_owners
from agent.paths import DEMO_REGISTRY
from agent.registry import load_registry
from tests.unit.test_report_support import HOST, T0, lifecycle, run_cli, shipped_ruleset, stepping_clock


def _iso(t: float) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def _no_accounts(uid: int) -> str | None:
    return None


# lisi writes a secret document to the stick registered to him at confidential (BM-MEDIA-002: operator,
# media.holder, host.unit), and zhangsan's host is the one it happens on (custodian zhangsan)
EVENT = {"event": {"kind": "file.create", "time": T0 + 60},
         "process": {"pid": 1104, "exe": "/usr/bin/cp", "name": "cp", "uid": 1001, "loginuid": 1001},
         "file": {"path": "/media/lisi/红盘/预算.xlsx", "marking": "secret", "on_removable": True},
         "media": {"device": "/dev/sdc1", "mount": "/media/lisi/红盘", "fs": "vfat", "serial": "BB44556677"}}


def _records(names: bool) -> list[dict[str, Any]]:
    attribute = Attributor(load_registry(DEMO_REGISTRY), _no_accounts, no_owners)
    event = attribute(Event.from_dict(json.loads(json.dumps(EVENT))))
    engine = Engine(shipped_ruleset())
    rules = [r for r in engine.match(event) if r.id == "BM-MEDIA-002"]
    assert rules, "BM-MEDIA-002 did not fire"
    return [Finding(rules[0], event, attribute.names if names else None).to_record()]


def test_a_finding_records_the_custodian_and_holder_by_name_with_the_account() -> None:
    (rec,) = _records(names=True)
    holder = next(a for a in rec["answer"] if a["role"] == "media.holder")
    assert holder["name"] == "李四" and holder["account"] == "lisi"
    op = next(a for a in rec["answer"] if a["role"] == "operator")
    assert op["name"] == "李四" and op["account"] == "lisi"
    assert rec["accountable"]["custodian"] == "张三" and rec["accountable"]["custodian_account"] == "zhangsan"
    # the event keeps the accounts rules compare (media.holder == operator.account)
    assert rec["event"]["media"]["holder"] == "lisi" and rec["event"]["host"]["custodian"] == "zhangsan"


def _journal(state: Path, records: list[dict[str, Any]]) -> None:
    with Journal(state, host=HOST, clock=stepping_clock(T0 + 3600)) as j:
        j.append(lifecycle("agent.start", T0, HOST))
        for r in records:
            r["host"] = HOST
            j.append(r)
        j.append(lifecycle("agent.stop", T0 + 1800, HOST))


def _html(state: Path, tmp: Path, lang: str, *extra: str) -> str:
    out = tmp / f"r-{lang}.html"
    status, _, err = run_cli(["report", "--state-dir", str(state), "--lang", lang, "--out", str(out),
                              "--since", _iso(T0), "--until", _iso(T0 + 1800), *extra])
    assert status == 0, err
    return re.sub(r"<[^>]+>", "|", out.read_text(encoding="utf-8"))


def test_report_names_people_recorded_by_name(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _journal(state, _records(names=True))
    text = _html(state, tmp_path, "zh")
    assert "|张三 (zhangsan)|" in text  # the header's custodian
    assert "|李四 (lisi)|" in text  # the accountability table: operator and holder
    assert "|zhangsan|" not in text and "|lisi|" not in text  # never an account alone in a cell


def test_report_names_people_of_older_records_through_the_registry(tmp_path: Path) -> None:
    """Records that hold accounts (written before the agent named them) are named through --registry."""
    state = tmp_path / "state"
    _journal(state, _records(names=False))
    bare = _html(state, tmp_path, "en")
    assert "|zhangsan|" in bare  # without a registry there is only the account to show
    text = _html(state, tmp_path, "en", "--registry", str(DEMO_REGISTRY))
    assert "|张三 (zhangsan)|" in text and "|李四 (lisi)|" in text
    assert "|zhangsan|" not in text and "|lisi|" not in text
    # a registry that does not load is an error with its place, not a silent fallback
    bad = tmp_path / "bad.yaml"
    bad.write_text("people: [{account: x}]\n", encoding="utf-8")
    status, _, err = run_cli(["report", "--state-dir", str(state), "--out", str(tmp_path / "x.html"),
                              "--registry", str(bad)])
    assert status == 1 and "bad.yaml:" in err


def test_csv_names_the_custodian_and_holder_with_their_accounts(tmp_path: Path) -> None:
    import csv
    state = tmp_path / "state"
    _journal(state, _records(names=False))  # accounts only: named through --registry
    out = tmp_path / "r.csv"
    status, _, err = run_cli(["report", "--state-dir", str(state), "--format", "csv", "--lang", "en", "--out",
                              str(out), "--registry", str(DEMO_REGISTRY)])
    assert status == 0, err
    (row,) = list(csv.DictReader(out.read_text(encoding="utf-8-sig").splitlines()))
    assert row["custodian"] == "张三" and row["custodian_account"] == "zhangsan"
    assert row["media_holder"] == "李四" and row["media_holder_account"] == "lisi"
