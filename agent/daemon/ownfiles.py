"""The agent's own files, watched without the operator listing them.

The rule packs name them (lists ``agent_config`` and ``agent_files``: the
configuration, the shipped rules, the unit and its drop-ins, the program and
its code), and DB-TAMP-003 judges what changes there; the same lists say
what the collectors watch, so a rule and its evidence never disagree. The
audit source watches each path itself (a file, or a tree for ``dir/``); the
files collector watches trees, so a single file is watched through its
directory, except in the directories every program runs from (``/usr/bin``:
every exec would be an open there), where only the audit watch sees it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

OWN_LISTS = ("agent_config", "agent_files")
_EXEC_DIRS = frozenset({"/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/local/sbin"})


def own_paths(lists: Mapping[str, Any]) -> tuple[str, ...]:
    """Every absolute path the rule lists name as the agent's own (``dir/`` for a tree), in order, once."""
    out: dict[str, None] = {}
    for name in OWN_LISTS:
        for p in lists.get(name, ()):
            if isinstance(p, str) and p.startswith("/"):
                out[p] = None
    return tuple(out)


def audit_watches(paths: tuple[str, ...]) -> tuple[str, ...]:
    """The paths the kernel can watch now: a tree that exists, or a file whose directory exists."""
    return tuple(p for p in paths if os.path.isdir(p if p.endswith("/") else os.path.dirname(p) or "/"))


def file_trees(paths: tuple[str, ...]) -> tuple[str, ...]:
    """The trees the files collector watches for them: a tree as named, a file through its directory."""
    out: dict[str, None] = {}
    for p in paths:
        tree = p.rstrip("/") if p.endswith("/") else os.path.dirname(p)
        if tree and tree not in _EXEC_DIRS:
            out[tree] = None
    return tuple(out)
