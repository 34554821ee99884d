"""User-space audit records (PAM, sshd, login, su, sudo, useradd, passwd) to login, sudo and account events.

The programs that authenticate people and manage accounts send their own
records through the kernel (USER_AUTH, USER_ACCT, USER_START, USER_LOGIN,
USER_CMD, ADD_USER, DEL_USER, USER_MGMT, USER_CHAUTHTOK, ...). One login
sends several; to keep one operation one event:

- ``auth.login`` success: the session opening (USER_START) of every service
  but sudo and the job schedulers (cron opens a session for every job);
  failure: a failed USER_AUTH or USER_ACCT (wrong password, expired or locked
  account), a USER_ERR, a failed USER_LOGIN that no USER_AUTH precedes (sshd
  with an unknown user), and the lock-out record ANOM_LOGIN_FAILURES;
- ``auth.sudo``: sudo's USER_CMD (what was run), or its failed USER_AUTH;
- ``account.change``: ADD_USER, DEL_USER, USER_MGMT, USER_CHAUTHTOK,
  ACCT_LOCK/UNLOCK and the group kin, whatever program sent them.

``process.loginuid`` is the record's auid: the person behind the session (su
keeps the caller's); the daemon's own uid is not an operator, so a failed
login by a stranger is never put on root.
"""

from __future__ import annotations

import posixpath
import pwd

from agent.events import Auth, Event, Process
from collectors.audit_records import Record, ident, number, text

USER_AUTH, USER_ACCT, USER_MGMT, USER_START, USER_END = 1100, 1101, 1102, 1105, 1106
USER_CHAUTHTOK, USER_ERR, USER_LOGIN, USER_LOGOUT = 1108, 1109, 1112, 1113
ADD_USER, DEL_USER, ADD_GROUP, DEL_GROUP, USER_CMD = 1114, 1115, 1116, 1117, 1123
GRP_MGMT, GRP_CHAUTHTOK, ACCT_LOCK, ACCT_UNLOCK = 1132, 1133, 1135, 1136
ANOM_LOGIN_FAILURES = 2100

USER_TYPES = frozenset({USER_AUTH, USER_ACCT, USER_MGMT, 1103, 1104, USER_START, USER_END, USER_CHAUTHTOK,
                        USER_ERR, 1110, USER_LOGIN, USER_LOGOUT, ADD_USER, DEL_USER, ADD_GROUP, DEL_GROUP,
                        USER_CMD, GRP_MGMT, GRP_CHAUTHTOK, ACCT_LOCK, ACCT_UNLOCK, ANOM_LOGIN_FAILURES})
_CHANGES = {ADD_USER: "add", DEL_USER: "delete", USER_MGMT: "modify", USER_CHAUTHTOK: "password",
            ACCT_LOCK: "lock", ACCT_UNLOCK: "unlock", ADD_GROUP: "group-add", DEL_GROUP: "group-delete",
            GRP_MGMT: "group-modify", GRP_CHAUTHTOK: "group-password"}
_NO_LOGIN = frozenset({"sudo", "cron", "crond", "atd", "anacron", "systemd"})
_SUDO = frozenset({"sudo", "sudoedit"})


def _result(f: dict[str, str]) -> str:
    res = (text(f.get("res")) or "").lower()
    return "success" if res in ("success", "1", "yes") else "failure"


def _account(f: dict[str, str], auid: int | None, uid: int | None,
             known: dict[int, str] | None = None) -> str | None:
    acct = text(f.get("acct"))
    if acct is not None:
        return acct
    who = number(f.get("id"))
    for n in (who, auid, uid):
        if n is not None and n != 4294967295:
            try:
                return pwd.getpwuid(n).pw_name
            except (KeyError, OverflowError):
                # userdel names the account by id, and it may be gone from the database by now.
                if known is not None and n in known:
                    return known[n]
                return f"uid:{n}"
    return None


def _address(f: dict[str, str]) -> str | None:
    addr = text(f.get("addr"))
    if addr is not None:
        return addr
    host = text(f.get("hostname"))
    return host if host and any(c.isdigit() for c in host) and ("." in host or ":" in host) else None


class UserRecords:
    """Turns user-space records into events; remembers which sessions failed authentication already."""

    def __init__(self, collector: str = "audit") -> None:
        self.collector = collector
        self._auth_failed: dict[tuple[int | None, int | None], None] = {}
        self._named: dict[int | None, str | None] = {}
        self._known: dict[int, str] = {}  # uid -> account, from the database and from records seen

    def event(self, rec: Record) -> Event | None:
        """The event of one record, or None for records that repeat what another already said."""
        f = rec.fields
        exe = text(f.get("exe"))
        service = posixpath.basename(exe) if exe else None
        auid, uid, pid = ident(f.get("auid")), ident(f.get("uid")), number(f.get("pid"))
        result = _result(f)
        t = rec.type
        kind: str | None = None
        method = text(f.get("op"))
        change = None
        if t in _CHANGES:
            kind, change = "account.change", _CHANGES[t]
        elif service in _SUDO:
            if t == USER_CMD or (t == USER_AUTH and result == "failure"):
                kind = "auth.sudo"
        elif t == USER_START and result == "success" and service not in _NO_LOGIN:
            kind = "auth.login"
        elif t in (USER_AUTH, USER_ACCT, USER_ERR) and result == "failure":
            kind = "auth.login"
            self._remember(pid, number(f.get("ses")))
        elif t == USER_LOGIN and result == "failure" and not self._forget(pid, number(f.get("ses"))):
            kind = "auth.login"
        elif t == ANOM_LOGIN_FAILURES:
            kind, result, method = "auth.login", "failure", "too-many-failures"
        if kind is None:
            return None
        if kind == "account.change" and not self._known:
            self._known = {p.pw_uid: p.pw_name for p in pwd.getpwall()}
        account = _account(f, auid, uid, self._known) if kind != "auth.sudo" or t != USER_CMD \
            else _account({}, auid, uid)
        if kind == "account.change":
            # useradd names the new account by id alone (not in the account database yet): the
            # name is the one its records about the same account named just before.
            if "acct" in f:
                self._named[pid] = account
            elif account is not None and account.startswith("uid:") and pid in self._named:
                account = self._named[pid]
            who = number(f.get("id"))
            if who is not None and account is not None and not account.startswith("uid:"):
                self._known[who] = account
        process = Process(pid=pid, name=service, exe=exe, cmdline=text(f.get("cmd")), cwd=text(f.get("cwd")),
                          uid=uid if kind == "auth.sudo" else None, loginuid=auid)
        auth = Auth(result=result, method=method, account=account, source_ip=_address(f),
                    tty=text(f.get("terminal")), service=service, change=change)
        return Event(kind, rec.time, self.collector, process=process, auth=auth)

    def _remember(self, pid: int | None, ses: int | None) -> None:
        self._auth_failed[(pid, ses)] = None
        if len(self._auth_failed) > 4096:
            self._auth_failed.pop(next(iter(self._auth_failed)))
        if len(self._named) > 4096:
            self._named.clear()

    def _forget(self, pid: int | None, ses: int | None) -> bool:
        return self._auth_failed.pop((pid, ses), 0) is None
