"""Count-over-window rules: the Nth match per key within the window fires, errors name their place."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.engine.engine import Engine
from agent.engine.rules import load_rules
from agent.errors import LoadErrors
from agent.events import Auth, Event

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
