"""Configuration files as the programs read them: include directives followed, sshd's effective settings, PAM stacks.

Every value keeps the ``path:line`` it came from, which is the evidence a
check shows. Includes are bounded in depth and count; a loop is reported.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from agent.assess.command import run_bounded
from agent.assess.rootfs import ProbeError, RootFS

MAX_DEPTH = 16
MAX_FILES = 256


@dataclass(frozen=True, slots=True)
class Line:
    """One meaningful line of a config file and where it is."""

    text: str
    path: str
    line: int

    @property
    def where(self) -> str:
        """``path:line``."""
        return f"{self.path}:{self.line}"


def read_lines(fs: RootFS, paths: list[str], include: str | tuple[str, ...] | None = None,
               comment: str = "#") -> list[Line]:
    """The non-comment lines of ``paths`` in order, with ``include DIRECTIVE target`` lines replaced by the target's.

    A target is a glob, relative to the including file's directory; a directory
    target includes its files. Raises ProbeError on a loop or past the bounds.
    """
    out: list[Line] = []
    count = [0]
    directives = (include,) if isinstance(include, str) else tuple(include or ())
    for p in paths:
        _read(fs, p, directives, comment, out, [], count)
    return out


def _read(fs: RootFS, path: str, include: tuple[str, ...], comment: str, out: list[Line], stack: list[str],
          count: list[int]) -> None:
    if path in stack:
        raise ProbeError(f"include loop: {' -> '.join([*stack[stack.index(path):], path])}")
    if len(stack) >= MAX_DEPTH:
        raise ProbeError(f"includes nested deeper than {MAX_DEPTH} at {path}")
    count[0] += 1
    if count[0] > MAX_FILES:
        raise ProbeError(f"more than {MAX_FILES} included files (at {path})")
    lines = fs.lines(path)
    if lines is None:
        return
    stack.append(path)
    for n, raw in enumerate(lines, 1):
        s = raw.strip()
        directive = next((d for d in include if s.lower().startswith(d.lower())
                          and s[len(d):len(d) + 1] in (" ", "\t")), None)
        if directive is not None:
            for target in s[len(directive):].split():
                for t in _targets(fs, path, target):
                    _read(fs, t, include, comment, out, stack, count)
            continue
        if not s or s.startswith(comment):
            continue
        out.append(Line(s, path, n))
    stack.pop()


def _targets(fs: RootFS, including: str, target: str) -> list[str]:
    if not target.startswith("/"):
        target = os.path.join(os.path.dirname(including), target)
    if any(c in target for c in "*?["):
        return fs.glob(target)
    info = fs.stat(target)
    if info is not None and info.is_dir:
        return [f"{target}/{n}" for n in fs.listdir(target) if not n.startswith(".") and "~" not in n]
    return [target]


def split_kv(text: str, separator: str) -> tuple[str, str]:
    """``key = value`` or ``key value``; ``separator`` is ``=``, ``space`` or ``auto``."""
    if separator == "=" or (separator == "auto" and "=" in text.split(None, 1)[0] + "="
                            and re.match(r"^[^\s=]+\s*=", text)):
        k, _, v = text.partition("=")
    else:
        parts = text.split(None, 1)
        k, v = parts[0], parts[1] if len(parts) > 1 else ""
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
        v = v[1:-1]
    return k.strip(), v


# -- sshd ----------------------------------------------------------------------

# OpenSSH 8.x/9.x compiled-in defaults of the keys the shipped policy reads.
SSHD_DEFAULTS = {
    "permitrootlogin": "prohibit-password", "passwordauthentication": "yes", "permitemptypasswords": "no",
    "maxauthtries": "6", "x11forwarding": "no", "logingracetime": "120", "clientaliveinterval": "0",
    "clientalivecountmax": "3", "hostbasedauthentication": "no", "ignorerhosts": "yes",
    "permituserenvironment": "no", "loglevel": "INFO", "usepam": "no", "pubkeyauthentication": "yes",
    "allowtcpforwarding": "yes", "maxsessions": "10", "banner": "none", "maxstartups": "10:30:100",
    "gatewayports": "no", "permittunnel": "no", "strictmodes": "yes", "kbdinteractiveauthentication": "yes",
}


def sshd_settings(fs: RootFS, timeout: float = 10.0) -> tuple[dict[str, tuple[str, str]], str]:
    """sshd's global settings: key to (value, evidence), and how they were found.

    On the live host ``sshd -T`` gives the effective settings when it runs;
    otherwise (a scanned root, or sshd -T failing) the config is read as sshd
    does: Include followed, the first value of a key wins, Match blocks left out,
    compiled-in defaults for the rest.
    """
    how = "sshd_config"
    if fs.live and fs.exists("/usr/sbin/sshd"):
        res = run_bounded(["/usr/sbin/sshd", "-T"], timeout=timeout)
        if res.error is None and res.returncode == 0:
            out: dict[str, tuple[str, str]] = {}
            for line in res.stdout.splitlines():
                k, _, v = line.partition(" ")
                out.setdefault(k.lower(), (v.strip(), f"sshd -T: {k} {v.strip()}"))
            return out, "sshd -T"
        how = f"sshd_config (sshd -T failed: {res.error or res.stdout.strip()[:200]})"
    if not fs.exists("/etc/ssh/sshd_config"):
        raise ProbeError("/etc/ssh/sshd_config: absent")
    settings: dict[str, tuple[str, str]] = {}
    in_match_file: str | None = None
    for ln in read_lines(fs, ["/etc/ssh/sshd_config"], include="Include"):
        k, v = split_kv(ln.text, "auto")
        key = k.lower()
        if key == "match":
            in_match_file = ln.path
            continue
        if in_match_file is not None:
            if ln.path == in_match_file:
                continue
            in_match_file = None
        settings.setdefault(key, (v, f"{ln.where}: {ln.text}"))
    for k, v in SSHD_DEFAULTS.items():
        settings.setdefault(k, (v, f"not set in /etc/ssh/sshd_config: sshd's default {k} {v}"))
    return settings, how


# -- PAM -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PamEntry:
    """One line of a PAM stack, includes resolved."""

    type: str
    control: str
    module: str
    args: dict[str, str]
    where: str
    text: str


def pam_stack(fs: RootFS, service: str) -> list[PamEntry]:
    """The stack of ``/etc/pam.d/SERVICE``, ``@include``, ``include`` and ``substack`` followed."""
    out: list[PamEntry] = []
    _pam(fs, f"/etc/pam.d/{service}", out, [])
    return out


def _pam(fs: RootFS, path: str, out: list[PamEntry], stack: list[str]) -> None:
    if path in stack:
        raise ProbeError(f"include loop: {' -> '.join([*stack[stack.index(path):], path])}")
    if len(stack) >= MAX_DEPTH:
        raise ProbeError(f"PAM includes nested deeper than {MAX_DEPTH} at {path}")
    lines = fs.lines(path)
    if lines is None:
        if not stack:
            raise ProbeError(f"{path}: absent")
        return
    stack.append(path)
    for n, raw in enumerate(lines, 1):
        s = raw.split("#", 1)[0].strip()
        if not s:
            continue
        if s.startswith("@include"):
            _pam(fs, "/etc/pam.d/" + s.split()[1] if len(s.split()) > 1 else path, out, stack)
            continue
        m = re.match(r"^-?(\w+)\s+(\[[^\]]*\]|\S+)\s+(\S+)\s*(.*)$", s)
        if not m:
            continue
        ptype, control, module, rest = m.groups()
        if control in ("include", "substack"):
            _pam(fs, "/etc/pam.d/" + module, out, stack)
            continue
        args = {}
        for a in rest.split():
            k, _, v = a.partition("=")
            args[k] = v
        out.append(PamEntry(ptype, control, os.path.basename(module), args, f"{path}:{n}", s))
    stack.pop()
