"""Logins, sudo and account changes from the records PAM, su, sudo and useradd send, on the real kernel.

A test PAM service (pam_unix only) under /etc/pam.d, two test accounts (one
registered, one not) and a sudoers drop-in are made for the test and removed
after it; the kernel's audit state is checked to be as before.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from auditkit import as_person, judge, running

from collectors.audit import AuditCollector

pytestmark = pytest.mark.root

REGISTERED, STRANGER = ("dw13reg", 4301), ("dw13odd", 4302)
PASSWORD = "Corr3ct-Horse-9"
REGISTRY = f"""\
host: {{id: dw-auth-host, unit: 测试中心, department: 测试委员会, custodian: {REGISTERED[0]}, level: secret,
       zone: intranet}}
departments: [{{name: 测试委员会}}]
units: [{{name: 测试中心, department: 测试委员会}}]
people:
  - {{account: {REGISTERED[0]}, uid: {REGISTERED[1]}, name: 登记员, unit: 测试中心, clearance: secret}}
zones: {{default: internet, networks: [{{name: intranet, cidrs: [10.0.0.0/8]}}]}}
"""


@pytest.fixture
def accounts() -> Iterator[str]:
    """The two accounts with a password, a PAM service and a sudoers rule for them; the service name."""
    service = f"dw13-{uuid.uuid4().hex[:8]}"
    pam = Path("/etc/pam.d") / service
    sudoers = Path("/etc/sudoers.d") / service
    for name, uid in (REGISTERED, STRANGER):
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["useradd", "-M", "-u", str(uid), "-s", "/bin/sh", name], check=True)
        subprocess.run(["chpasswd"], input=f"{name}:{PASSWORD}\n".encode(), check=True)
    pam.write_text("auth required pam_unix.so\naccount required pam_unix.so\nsession required pam_unix.so\n")
    sudoers.write_text(f"{REGISTERED[0]},{STRANGER[0]} ALL=(root) NOPASSWD: /bin/true\n")
    sudoers.chmod(0o440)
    try:
        yield service
    finally:
        pam.unlink(missing_ok=True)
        sudoers.unlink(missing_ok=True)
        for name, _ in (REGISTERED, STRANGER):
            subprocess.run(["userdel", name], capture_output=True, check=False)


def logged_in_as(uid: int) -> Callable[[], None]:
    """A preexec function: the child's login identity (auid) is ``uid``; it stays root."""
    def become() -> None:
        with open("/proc/self/loginuid", "w") as f:
            f.write(str(uid))
    return become


def pamtester(service: str, user: str, password: str, *ops: str) -> int:
    """pamtester's exit status for ``ops`` as ``user`` with ``password`` typed in."""
    return subprocess.run(["pamtester", service, user, *ops], input=f"{password}\n".encode(),
                          capture_output=True, timeout=30, check=False).returncode


def test_login_failures_successes_sudo_and_account_changes(accounts: str, tmp_path: Path) -> None:
    reg, odd = REGISTERED[0], STRANGER[0]
    c = AuditCollector({})
    with running(c) as run:
        for _ in range(5):
            assert pamtester(accounts, reg, "wrong-password", "authenticate") != 0
        assert pamtester(accounts, odd, PASSWORD, "authenticate", "open_session", "close_session") == 0
        assert pamtester(accounts, reg, PASSWORD, "authenticate", "open_session", "close_session") == 0
        # su from a person's session (root, but logged in as the registered person) keeps that person behind it
        su = subprocess.run(["su", "-s", "/bin/true", odd], preexec_fn=logged_in_as(REGISTERED[1]),
                            capture_output=True, timeout=30, check=False)
        assert su.returncode == 0
        sudo = {}
        for name, uid in (REGISTERED, STRANGER):
            p = subprocess.run(["sudo", "-n", "/bin/true"], preexec_fn=as_person(uid), capture_output=True,
                               timeout=30, check=False)
            assert p.returncode == 0, p.stderr
            sudo[name] = uid
        extra = f"dw13new{os.getpid() % 1000}"
        subprocess.run(["useradd", "-M", extra], check=True)
        subprocess.run(["userdel", extra], check=True)
        subprocess.run(["userdel", reg], check=True)  # the registry still names this one
        got = run.where(lambda e: e.kind == "account.change" and e.auth.account == reg and e.auth.change == "delete")
        events = list(run.events)
    assert got
    auth = [e for e in events if e.kind in ("auth.login", "auth.sudo", "account.change")]
    failures = [e for e in auth if e.kind == "auth.login" and e.auth.result == "failure" and e.auth.account == reg]
    assert len(failures) == 5 and all(e.auth.service == "pamtester" for e in failures)
    logins = {e.auth.account for e in auth if e.kind == "auth.login" and e.auth.result == "success"}
    assert {reg, odd} <= logins
    su_login = [e for e in auth if e.kind == "auth.login" and e.auth.service == "su"]
    assert su_login and su_login[0].auth.account == odd and su_login[0].process.loginuid == REGISTERED[1]
    sudos = {e.process.loginuid: e for e in auth if e.kind == "auth.sudo"}
    assert set(sudo.values()) <= set(sudos) and sudos[STRANGER[1]].auth.account == odd
    assert sudos[STRANGER[1]].process.cmdline == "/bin/true"
    changes = {(e.auth.account, e.auth.change) for e in auth if e.kind == "account.change"}
    assert {(extra, "add"), (extra, "delete"), (reg, "delete")} <= changes, changes
    fired = judge(auth, REGISTRY, tmp_path)
    by_rule: dict[str, set[tuple[str, str | None]]] = {}
    for rule, e in fired:
        by_rule.setdefault(rule, set()).add((e.kind, e.auth.account))
    assert by_rule.get("DB-AUTH-001") == {("auth.login", reg)}  # the fifth failure, once
    assert ("auth.login", odd) in by_rule["DB-AUTH-004"] and ("auth.sudo", odd) in by_rule["DB-AUTH-004"]
    assert not {x for x in by_rule["DB-AUTH-004"] if x[1] == reg}  # the registered person: no finding
    assert {("account.change", extra), ("account.change", reg)} <= by_rule["DB-ACCT-001"]
    assert ("auth.login", reg) not in by_rule.get("DB-AUTH-003", set())
