"""Count-over-window rules: the Nth match per key within the window fires, errors name their place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.engine.engine import Engine
from agent.engine.rules import load_rules
from agent.engine.window import Threshold, Window
from agent.errors import LoadErrors
from agent.events import FIELDS, Auth, Event

PACK = """\
pack: t
rules:
  - id: FAIL
    title: {{zh: 失败, en: failures}}
    when: event.kind == "auth.login" and auth.result == "failure"
    {threshold}
    severity: high
    action: alert
    message: {{zh: x, en: x}}
"""


def engine(tmp: Path, threshold: str) -> Engine:
    (tmp / "t.yaml").write_text(PACK.format(threshold=threshold), encoding="utf-8")
    return Engine(load_rules([tmp]))


def fail(t: float, account: str = "bob", ip: str = "203.0.113.1", result: str = "failure") -> Event:
    return Event("auth.login", time=t, auth=Auth(result=result, account=account, source_ip=ip))


def test_fifth_failure_for_one_account_within_the_window_fires_and_the_count_starts_again(tmp_path: Path) -> None:
    e = engine(tmp_path, "threshold: {count: 5, within: 5m, by: [auth.account]}")
    fired = [bool(e.match(fail(100.0 + i))) for i in range(10)]
    assert fired == [False] * 4 + [True] + [False] * 4 + [True]


def test_failures_spread_beyond_the_window_or_over_accounts_do_not_fire(tmp_path: Path) -> None:
    e = engine(tmp_path, "threshold: {count: 3, within: 60s, by: [auth.account]}")
    # Slow guessing: one try every 40 s never has three inside a minute.
    assert not any(e.match(fail(40.0 * i)) for i in range(10))
    # Spraying: one try per account.
    assert not any(e.match(fail(1000.0 + i, account=f"u{i}")) for i in range(10))
    # Successes between failures are not counted at all.
    assert not e.match(fail(2000.0, "carol")) and not e.match(fail(2001.0, "carol", result="success"))
    assert not e.match(fail(2002.0, "carol")) and e.match(fail(2003.0, "carol"))


def test_by_address_counts_across_accounts(tmp_path: Path) -> None:
    e = engine(tmp_path, "threshold: {count: 3, within: 5m, by: [auth.source_ip]}")
    got = [bool(e.match(fail(10.0 + i, account=f"u{i}"))) for i in range(3)]
    assert got == [False, False, True]


@pytest.mark.parametrize(("threshold", "message"), [
    ("threshold: {count: 1, within: 5m}", "threshold count"),
    ("threshold: {count: 5, within: soon}", "bad duration"),
    ("threshold: {count: 5, within: 5m, by: [auth.acount]}", "unknown field 'auth.acount'"),
    ("threshold: {count: 5}", "within"),
])
def test_bad_threshold_is_a_load_error_with_its_place(tmp_path: Path, threshold: str, message: str) -> None:
    with pytest.raises(LoadErrors) as exc:
        engine(tmp_path, threshold)
    text = str(exc.value.errors[0])
    assert f"{tmp_path / 't.yaml'}:" in text and message in text


def test_by_an_event_field_counts_per_collector(tmp_path: Path) -> None:
    """``by: [event.collector]``: failures seen by the audit source and by the journal are counted apart."""
    e = engine(tmp_path, "threshold: {count: 3, within: 5m, by: [event.collector, auth.account]}")

    def seen(t: float, collector: str, account: str = "bob") -> bool:
        ev = Event("auth.login", time=t, collector=collector, auth=Auth(result="failure", account=account))
        return bool(e.match(ev))
    assert [seen(1.0, "audit"), seen(2.0, "journal"), seen(3.0, "audit"), seen(4.0, "journal")] == [False] * 4
    assert not seen(5.0, "audit", "carol")  # the same collector, another account
    assert seen(6.0, "audit") and seen(7.0, "journal")


def full_event() -> Event:
    """An event with every catalogue field set, each to a value of its type that no other field has."""
    data: dict[str, dict[str, Any]] = {}
    for i, (dotted, spec) in enumerate(sorted(FIELDS.items())):
        value = {"int": i, "float": float(i) + 0.5, "bool": True, "level": "secret"}.get(spec.type, dotted)
        data.setdefault(spec.group, {})[spec.name] = value
    data["event"]["kind"] = "auth.login"
    return Event.from_dict(data)


@pytest.mark.parametrize("dotted", sorted(FIELDS))
def test_every_catalogue_field_can_key_a_count(dotted: str) -> None:
    ev = full_event()
    assert ev.field(dotted) is not None
    assert Window(Threshold(2, 60.0, (dotted,))).key(ev) == (ev.field(dotted),)
