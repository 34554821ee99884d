"""Sigma test data: the vendored SigmaHQ Linux rules, a reference matcher, and events built from rules.

The reference matcher (``reference_match``) evaluates a Sigma rule on a flat
map of Sigma field values straight from the specification: wildcards via a
hand-written translation, ``re.IGNORECASE`` for case-insensitivity, a small
recursive condition evaluator. It shares no code with ``agent.engine.sigma*``,
so tests can compare the engine against it. It follows the same documented
semantics for unset fields: three-valued logic, where a test on an unset
field is unknown unless it accepts the empty value (``null``, ``''``), and a
rule fires only when its condition is true.

``witness`` builds field values that make a rule fire, from the rule's own
selections; ``near_miss`` changes one field of a witness so that it no longer
fires. ``write_workload`` writes the benchmark's event mix as JSON lines.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import yaml

from tests.shared import shared_path

CATEGORY_DIRS = ("process_creation", "network_connection", "file_event")

# Sigma field -> (event group, field); the specification of the mapping, written out independently.
FIELD_PATHS = {
    "Image": ("process", "exe"), "CommandLine": ("process", "cmdline"), "CurrentDirectory": ("process", "cwd"),
    "User": ("process", "user"), "ProcessId": ("process", "pid"), "ParentProcessId": ("process", "ppid"),
    "LogonId": ("process", "loginuid"), "ParentImage": ("parent", "exe"), "ParentCommandLine": ("parent", "cmdline"),
    "DestinationIp": ("net", "remote_ip"), "DestinationPort": ("net", "remote_port"),
    "DestinationHostname": ("net", "domain"), "SourceIp": ("net", "local_ip"), "SourcePort": ("net", "local_port"),
    "Protocol": ("net", "proto"), "TargetFilename": ("file", "path"),
}
NUMERIC = {"ProcessId", "ParentProcessId", "LogonId", "DestinationPort", "SourcePort"}


def vendor_root() -> Path | None:
    """The vendored Sigma tree: ``<repo>/../shared/vendor/sigma``, else ``/work/shared/vendor/sigma``."""
    linux = shared_path("vendor", "sigma", "rules", "linux")
    return linux.parents[1] if linux is not None and linux.is_dir() else None


def rule_dirs(root: Path) -> list[Path]:
    """The category directories of the vendored Linux rules."""
    return [root / "rules" / "linux" / d for d in CATEGORY_DIRS]


def rule_files(root: Path) -> list[Path]:
    """Every vendored Linux rule file, in name order per category."""
    return [f for d in rule_dirs(root) for f in sorted(d.glob("*.yml"))]


def load_doc(path: Path) -> dict[str, Any]:
    """A Sigma rule as plain YAML data."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


# -- the reference matcher ---------------------------------------------------

def _glob(pattern: str, anchor_start: bool, anchor_end: bool) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "*?\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return re.compile(("^" if anchor_start else "") + "".join(out) + ("$" if anchor_end else ""),
                      re.IGNORECASE | re.DOTALL)


Truth = bool | None  # None: unknown (a test on an unset field)


def _all(values: list[Truth]) -> Truth:
    return False if False in values else None if None in values else True


def _any(values: list[Truth]) -> Truth:
    return True if True in values else None if None in values else False


def _value_match(field: str, mods: list[str], pattern: Any, value: Any) -> Truth:
    if field == "Initiated":
        return str(pattern).lower() == str(value).lower()
    if field in NUMERIC:
        if value is None:
            return True if pattern is None else None
        return pattern is not None and int(pattern) == value
    if value is None:  # decided only by tests that accept the empty value
        return True if _value_match(field, mods, pattern, "") else None
    text = str(value)
    if pattern is None:
        return text == ""
    if "re" in mods:
        return re.search(str(pattern), text) is not None
    if "cidr" in mods:
        try:
            return ipaddress.ip_address(text) in ipaddress.ip_network(str(pattern), strict=False)
        except ValueError:
            return False
    p = str(pattern)
    if "contains" in mods:
        return _glob(p, False, False).search(text) is not None
    if "startswith" in mods:
        return _glob(p, True, False).search(text) is not None
    if "endswith" in mods:
        return _glob(p, False, True).search(text) is not None
    return _glob(p, True, True).search(text) is not None


def _mapping_match(m: dict[str, Any], fields: dict[str, Any]) -> Truth:
    out: list[Truth] = []
    for key, patterns in m.items():
        name, *mods = key.split("|")
        pats = patterns if isinstance(patterns, list) else [patterns]
        hits = [_value_match(name, mods, p, fields.get(name)) for p in pats]
        out.append(_all(hits) if "all" in mods else _any(hits))
    return _all(out)


def _selection_match(body: Any, fields: dict[str, Any]) -> Truth:
    if isinstance(body, dict):
        return _mapping_match(body, fields)
    return _any([_mapping_match(m, fields) for m in body])


def reference_match(doc: dict[str, Any], fields: dict[str, Any]) -> bool:
    """Whether the rule fires on these Sigma field values (absent keys are unset fields)."""
    return _evaluate(doc, fields) is True


def _evaluate(doc: dict[str, Any], fields: dict[str, Any]) -> Truth:
    det = doc["detection"]
    names = [k for k in det if k != "condition"]
    tokens = re.findall(r"\(|\)|[^\s()]+", det["condition"])
    pos = 0

    def sel(name: str) -> Truth:
        return _selection_match(det[name], fields)

    def expr() -> Truth:
        nonlocal pos
        value = term()
        while pos < len(tokens) and tokens[pos] == "or":
            pos += 1
            value = _any([term(), value])
        return value

    def term() -> Truth:
        nonlocal pos
        value = factor()
        while pos < len(tokens) and tokens[pos] == "and":
            pos += 1
            value = _all([factor(), value])
        return value

    def factor() -> Truth:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "not":
            inner = factor()
            return None if inner is None else not inner
        if tok == "(":
            value = expr()
            pos += 1
            return value
        if pos < len(tokens) and tokens[pos] == "of":
            target = tokens[pos + 1]
            pos += 2
            group = [n for n in names if (target == "them" and not n.startswith("_"))
                     or re.fullmatch(re.escape(target).replace(r"\*", ".*"), n)]
            results = [sel(n) for n in group]
            return _any(results) if tok == "1" else _all(results)
        return sel(tok)

    return expr()


# -- witnesses ---------------------------------------------------------------

def regex_witness(pattern: str) -> str:
    """A short string the regular expression matches (for the constructs Sigma rules use)."""
    from re import _parser  # type: ignore[attr-defined]

    def walk(items: Any) -> str:
        out = []
        for op, arg in items:
            name = str(op)
            if name == "LITERAL":
                out.append(chr(arg))
            elif name == "NOT_LITERAL":
                out.append("x" if chr(arg) != "x" else "y")
            elif name == "ANY":
                out.append("x")
            elif name == "IN":
                out.append(_in_witness(arg))
            elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                lo, _hi, sub = arg
                out.append(walk(sub) * lo)
            elif name == "SUBPATTERN":
                out.append(walk(arg[-1]))
            elif name == "BRANCH":
                out.append(walk(arg[1][0]))
        return "".join(out)

    return walk(_parser.parse(pattern))


def _in_witness(items: Any) -> str:
    negate = any(str(op) == "NEGATE" for op, _ in items)
    if negate:
        banned = {chr(a) for op, a in items if str(op) == "LITERAL"}
        return next(c for c in "xQ0#" if c not in banned)
    op, arg = items[0]
    if str(op) == "LITERAL":
        return chr(arg)
    if str(op) == "RANGE":
        return chr(arg[0])
    return {"CATEGORY_SPACE": " ", "CATEGORY_DIGIT": "0", "CATEGORY_WORD": "a"}.get(str(arg), "a")


def _plain(pattern: str) -> str:
    """A literal that a wildcard pattern matches: ``*`` as nothing, ``?`` as one letter."""
    return re.sub(r"\\([*?\\])|\*|\?", lambda m: m.group(1) or ("" if m.group(0) == "*" else "x"), pattern)


def _constraints(m: dict[str, Any], pick: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, patterns in m.items():
        name, *mods = key.split("|")
        pats = patterns if isinstance(patterns, list) else [patterns]
        chosen = pats if "all" in mods else [pats[min(pick, len(pats) - 1)]]
        c = out.setdefault(name, {"mid": []})
        for p in chosen:
            if p is None:
                c["exact"] = None
            elif "re" in mods:
                c["mid"].append(regex_witness(str(p)))
            elif "cidr" in mods:
                c["exact"] = str(next(iter(ipaddress.ip_network(str(p), strict=False).hosts()), p))
            elif "contains" in mods:
                c["mid"].append(_plain(str(p)))
            elif "startswith" in mods:
                c["start"] = _plain(str(p))
            elif "endswith" in mods:
                c["end"] = _plain(str(p))
            else:
                c["exact"] = int(p) if name in NUMERIC else _plain(str(p)) if isinstance(p, str) else str(p).lower()
    return out


def _render(cons: dict[str, dict[str, Any]], sep: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, c in cons.items():
        if "exact" in c:
            if c["exact"] is not None:
                fields[name] = c["exact"]
            continue
        fields[name] = sep.join(x for x in (c.get("start", ""), *c["mid"], c.get("end", "")) if x)
    return fields


def _merge(parts: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in parts:
        for name, c in p.items():
            d = out.setdefault(name, {"mid": []})
            d["mid"] = d["mid"] + c["mid"]
            for k in ("start", "end", "exact"):
                if k in c:
                    d[k] = c[k]
    return out


def witness(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Sigma field values on which the rule fires, built from its selections; None if none was found."""
    det = doc["detection"]
    names = [k for k in det if k != "condition"]
    for size in range(1, min(len(names), 10) + 1):
        for subset in itertools.combinations(names, size):
            for pick, alt, sep in itertools.product((0, -1), (0, -1), (" ", "")):
                parts = []
                for n in subset:
                    body = det[n]
                    maps = [body] if isinstance(body, dict) else body
                    parts.append(_constraints(maps[alt if alt < len(maps) else 0], pick if pick >= 0 else 99))
                fields = _render(_merge(parts), sep)
                for filled in _filled(doc, fields):
                    if reference_match(doc, filled):
                        return filled
    return None


_NEUTRAL: dict[str, list[Any]] = {"num": [7, 65000], "ip": ["192.0.2.7"], "text": ["/opt/dutywatch/neutral", "x"]}


def _filled(doc: dict[str, Any], fields: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The values as built, then with every other field the rule names set to a neutral value.

    A field the event lacks leaves ``not filter`` unknown, so a witness for
    ``selection and not filter`` must carry the filter's fields, with values
    the filter does not accept.
    """
    yield fields
    others = [n for n in _field_names(doc) if n not in fields and n != "Initiated"]
    if not others:
        return
    for i in range(2):
        yield {**{n: _neutral(n, i) for n in others}, **fields}


def _neutral(name: str, i: int) -> Any:
    choices = _NEUTRAL["num" if name in NUMERIC else "ip" if name.endswith("Ip") else "text"]
    return choices[min(i, len(choices) - 1)]


def _field_names(doc: dict[str, Any]) -> list[str]:
    names: dict[str, None] = {}
    for key, body in doc["detection"].items():
        if key == "condition":
            continue
        for m in [body] if isinstance(body, dict) else body if isinstance(body, list) else []:
            if isinstance(m, dict):
                names.update((k.split("|")[0], None) for k in m)
    return list(names)


def near_miss(doc: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any] | None:
    """The witness with one field changed so that the rule no longer fires."""
    for name in fields:
        value: Any = 7 if name in NUMERIC else "false" if name == "Initiated" else "/opt/dutywatch/near-miss"
        changed = {**fields, name: value}
        if not reference_match(doc, changed):
            return changed
    return None


def to_event(category: str, fields: dict[str, Any], rename: bool = False) -> dict[str, Any]:
    """A raw DutyWatch event (the JSON form of rule samples) carrying these Sigma field values."""
    kind = {"process_creation": "process.exec", "file_event": "file.rename" if rename else "file.create",
            "network_connection": "net.accept" if str(fields.get("Initiated", "true")).lower() == "false"
            else "net.connect"}[category]
    ev: dict[str, Any] = {"event": {"kind": kind, "time": 1.7e9, "collector": "replay"},
                          "process": {"pid": 4242, "uid": 1000, "loginuid": 1000, "user": "zhangsan"}}
    for name, value in fields.items():
        if name == "Initiated":
            ev.setdefault("net", {})["direction"] = "out" if kind == "net.connect" else "in"
            continue
        group, key = FIELD_PATHS[name]
        if rename and name == "TargetFilename":
            ev["file"] = {"path": "/var/tmp/.staging", "dest_path": value}
            continue
        ev.setdefault(group, {})[key] = value
    exe = ev["process"].get("exe")
    if isinstance(exe, str):
        ev["process"]["name"] = exe.rsplit("/", 1)[-1]
    return ev


def case_swapped(fields: dict[str, Any]) -> dict[str, Any]:
    """The same values with letter case swapped (Sigma matching ignores case, except ``re``)."""
    return {k: v.swapcase() if isinstance(v, str) and k != "Initiated" else v for k, v in fields.items()}


# -- the benchmark mix -------------------------------------------------------

_TOOLS = ["bash", "python3", "git", "make", "node", "java", "nginx", "postgres", "sed", "awk", "tar", "cp",
          "ssh", "vim", "rsync", "journalctl", "systemd-tmpfiles", "dpkg-query", "gzip", "sort"]
# Shells that open connections are what reverse-shell rules look for; ordinary clients are not.
_NET_TOOLS = ["python3", "git", "node", "java", "nginx", "postgres", "ssh", "rsync", "apt-get", "chronyd"]
_USERS = [(1000, 1000, "zhangsan"), (1001, 1001, "lisi"), (0, 1000, "root"), (33, None, "www-data")]


def background(rnd: random.Random, i: int) -> dict[str, Any]:
    """One ordinary event: 60% exec, 25% connect or accept, 15% file create/write/rename."""
    uid, loginuid, user = rnd.choice(_USERS)
    tool = rnd.choice(_TOOLS)
    proc: dict[str, Any] = {"pid": 2000 + i % 30000, "ppid": 1999, "name": tool, "exe": f"/usr/bin/{tool}",
                            "cmdline": f"{tool} --job {i % 997} --out /srv/work/out-{i % 50}.dat", "cwd": "/srv/work",
                            "uid": uid, "user": user}
    if loginuid is not None:
        proc["loginuid"] = loginuid
    head = {"time": 1.7e9 + i * 0.001, "collector": "replay"}
    r = rnd.random()
    if r < 0.60:
        return {"event": {"kind": "process.exec", **head}, "process": proc,
                "parent": {"pid": 1999, "name": "bash", "exe": "/usr/bin/bash", "cmdline": "-bash"}}
    if r < 0.85:
        tool = rnd.choice(_NET_TOOLS)
        proc = {**proc, "name": tool, "exe": f"/usr/bin/{tool}", "cmdline": f"{tool} --job {i % 997}"}
        out = rnd.random() < 0.8
        return {"event": {"kind": "net.connect" if out else "net.accept", **head}, "process": proc,
                "net": {"proto": "tcp", "direction": "out" if out else "in", "local_ip": "10.1.2.3",
                        "local_port": 40000 + i % 20000, "remote_ip": f"10.{i % 200}.{i % 250}.{i % 7 + 1}",
                        "remote_port": rnd.choice((443, 80, 5432, 22))}}
    kind = rnd.choice(("file.create", "file.write", "file.write", "file.rename"))
    f: dict[str, Any] = {"path": f"/srv/work/out-{i % 50}.dat"}
    if kind == "file.rename":
        f["dest_path"] = f"/srv/work/out-{i % 50}.old"
    return {"event": {"kind": kind, **head}, "process": proc, "file": f}


def crafted(root: Path) -> list[dict[str, Any]]:
    """One firing event per vendored rule for which a witness can be built."""
    out = []
    for path in rule_files(root):
        doc = load_doc(path)
        fields = witness(doc)
        if fields is not None:
            out.append(to_event(doc["logsource"]["category"], fields))
    return out


def events(n: int, root: Path | None, match_ratio: float = 0.005, seed: int = 5) -> Iterator[bytes]:
    """``n`` JSON lines: the background mix, ``match_ratio`` of them crafted to fire a real rule."""
    rnd = random.Random(seed)
    hits = [msgspec.json.encode(e) for e in crafted(root)] if root is not None else []
    encode = msgspec.json.encode
    for i in range(n):
        if hits and rnd.random() < match_ratio:
            yield hits[i % len(hits)] + b"\n"
        else:
            yield encode(background(rnd, i)) + b"\n"


def write_workload(path: Path, n: int, root: Path | None) -> None:
    """Write the benchmark's events to ``path``."""
    with path.open("wb") as f:
        f.writelines(events(n, root))


def b64(text: str) -> str:
    """Base64 of UTF-8 text (for tests of the base64 modifiers)."""
    return base64.b64encode(text.encode()).decode()
