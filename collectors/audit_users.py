"""User-space audit records (PAM, sudo, login, sshd, useradd, passwd) to login, sudo and account events."""

from __future__ import annotations

from agent.events import Event
from collectors.audit_records import Record

# USER_AUTH .. USER_LOGOUT, ADD/DEL_USER, ADD/DEL_GROUP, USER_CMD, GRP_AUTH, GRP/USER management, ACCT_LOCK,
# ANOM_LOGIN_* (the kernel passes these through from user space as they are).
USER_TYPES = frozenset({*range(1100, 1114 + 1), 1115, 1116, 1117, 1123, 1125, 1126, 1132, 1133, 1135, 1136,
                        *range(2100, 2106)})


def user_event(rec: Record, collector: str) -> Event | None:
    """The event of one user-space record, or None for records that are not about logins or accounts."""
    return None
