"""Refuse config, registry and rule files that someone other than root could change.

Like sshd's StrictModes: the agent runs as root and decides what counts as a
finding, so a rule file (or any directory above it) that another user can
write is a way to switch detection off. Every existing file named by the
config, and every directory from it up to ``/``, must be owned by root or by
the agent's own user and must not be writable by group or others. A
world-writable directory is accepted only when it is root's and sticky
(``/tmp``): there, others cannot rename or remove entries they do not own,
and the entry itself is checked next.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from agent.config import Config, load_config
from agent.errors import LoadError, LoadErrors, Location, access_hint


def _owner_name(uid: int) -> str:
    try:
        import pwd
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def _chain(path: Path) -> Iterator[Path]:
    """The path itself, then each directory above it up to ``/``."""
    yield path
    yield from path.parents


def _problem(p: Path, st: os.stat_result, euid: int, what: str, named: Path) -> str | None:
    mode = stat.S_IMODE(st.st_mode)
    is_dir = stat.S_ISDIR(st.st_mode)
    kind = "directory" if is_dir else "file"
    via = "" if p == named else f" (a directory above {what} {named})"
    allowed = "root" if euid == 0 else f"root or {_owner_name(euid)}"
    if st.st_uid not in (0, euid):
        return (f"{kind} {p}{via} is owned by {_owner_name(st.st_uid)}, who could change what the agent "
                f"loads; it must be owned by {allowed}: chown root {p}")
    if stat.S_ISLNK(st.st_mode):
        return None  # a link's own mode bits mean nothing; its owner and its target are checked
    sticky_root = is_dir and mode & stat.S_ISVTX and st.st_uid == 0
    if mode & 0o022 and not sticky_root:
        who = "group and others" if mode & 0o022 == 0o022 else ("group" if mode & 0o020 else "others")
        return (f"{kind} {p}{via} has mode {mode:04o}, writable by {who}; only {allowed} may be able to "
                f"change what the agent loads: chmod go-w {p}")
    return None


def check_path(path: str | Path, what: str, *, euid: int | None = None) -> list[LoadError]:
    """Problems with ``path`` (one file or directory) and every directory above it.

    A path that does not exist gives no problem here: the loaders report
    missing files themselves. Symbolic links are followed, and the link and
    the directories above it are checked as well as its target.
    """
    uid = os.geteuid() if euid is None else euid
    named = Path(os.path.abspath(path))
    if not os.path.lexists(named):
        return []
    errors: list[LoadError] = []
    seen: set[Path] = set()
    for start in (named, Path(os.path.realpath(named))):
        for p in _chain(start):
            if p in seen:
                continue
            seen.add(p)
            try:
                st = os.lstat(p)
            except OSError as exc:
                errors.append(LoadError(Location(str(named)), f"cannot check {p}: {exc.strerror}"))
                break
            msg = _problem(p, st, uid, what, named)
            if msg is not None:
                errors.append(LoadError(Location(str(named)), f"refused: {msg}"))
                return errors  # the first weak point is the one to fix; the rest follow from it
    return errors


def check_tree(path: str | Path, what: str, *, euid: int | None = None) -> list[LoadError]:
    """``check_path`` for a file, or for a directory and the files below it that the agent reads.

    Rule folders are read with their subfolders (agent.engine.rules.rule_files_under), so their
    files are checked at every depth; other folders (config drop-ins) are read one level deep.
    """
    errors = check_path(path, what, euid=euid)
    p = Path(path)
    try:
        if errors or not p.is_dir():
            return errors
        if what == "rules":
            from agent.engine.rules import rule_files_under
            children = rule_files_under(p)
        else:
            children = [c for c in sorted(p.iterdir()) if c.suffix in (".yaml", ".yml")]
    except OSError as exc:
        return [*errors, LoadError(Location(str(p)), f"cannot read: {exc.strerror}{access_hint(exc)}")]
    for child in children:
        errors += check_path(child, what, euid=euid)
    return errors


def check_all(named: Iterable[tuple[str | Path, str]], *, euid: int | None = None) -> list[LoadError]:
    """Every problem of several ``(path, what)`` pairs, each path checked once."""
    errors: list[LoadError] = []
    done: set[str] = set()
    for path, what in named:
        key = os.path.abspath(path)
        if key in done:
            continue
        done.add(key)
        errors += check_tree(path, what, euid=euid)
    return errors


def config_paths(config: Config) -> list[tuple[str | Path, str]]:
    """What a loaded Config makes the agent read: the config, drop-ins, registry, rules, web config."""
    out: list[tuple[str | Path, str]] = [(config.path, "config")]
    out.append((Path(config.path).parent / "agent.d", "config drop-in directory"))
    out += [(f, "config drop-in") for f in config.files[1:]]
    out.append((config.registry, "registry"))
    out += [(r, "rules") for r in config.rules]
    if config.web_config is not None:
        out.append((config.web_config, "web config"))
    out += [(k, "policy root key") for k in config.policy.keys]
    return out


def load_checked_config(path: str | Path, *, euid: int | None = None) -> Config:
    """Check the config file and its drop-in directory, load it, then check everything it names.

    Raises LoadErrors before anything an attacker could have written is
    parsed: the config and drop-ins first, the registry and rules after the
    config said where they are.
    """
    first = check_all([(path, "config"), (Path(path).parent / "agent.d", "config drop-in directory")],
                      euid=euid)
    if first:
        raise LoadErrors(first)
    config = load_config(path)
    errors = check_all(config_paths(config), euid=euid)
    if errors:
        raise LoadErrors(errors)
    return config
