"""The agent's config: ``agent.yaml`` plus ``agent.d/*.yaml`` drop-ins (DESIGN §7).

Every key is validated and unknown keys are rejected with their location.
Drop-ins merge into the main file mapping by mapping, in name order; a
later scalar or list replaces an earlier one. Relative paths are relative
to the file that names them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.enforce.settings import EnforceConfig, parse_enforce
from agent.errors import LoadError, Location, Problems
from agent.paths import LOCAL_RULES, shipped_rules_dir
from agent.schema import expect_bool, expect_int, expect_list, expect_map, expect_str, str_list
from agent.yamlsrc import LDict, load_file

_COLLECTORS: dict[str, dict[str, Any]] = {
    "process": {"enabled": True, "mode": "auto", "interval": 1.0},
    "network": {"enabled": True, "mode": "auto", "sniff": True, "interfaces": []},
    "files": {"enabled": True, "paths": []},
    "media": {"enabled": True, "roots": ["/media", "/run/media", "/mnt"]},
    "host": {"enabled": True, "interval": 30.0},
    "audit": {"enabled": True, "mode": "auto", "connect": True, "mounts": True, "guard": True, "modules": True},
}
_MODES = {"process": ("auto", "netlink", "poll"), "network": ("auto", "sniff", "poll"),
          "audit": ("auto", "multicast", "daemon")}
_TOP = ("registry", "rules", "state_dir", "listen", "web_config", "queue_size", "collectors", "journal",
        "forward", "sigma", "report", "assess", "protect", "enforce",
        "policy", "export")
# What a drop-in delivered in a signed policy bundle may not change: where the policy and the journal live.
_NOT_FROM_POLICY = ("policy", "state_dir")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


@dataclass(frozen=True, slots=True)
class JournalConfig:
    """Journal retention, signing cadence and crypto suite (intl: SHA-256/Ed25519, gm: SM3/SM2)."""

    retention_days: int = 180
    max_size_mb: int = 2048
    checkpoint_every: int = 1000
    crypto: str = "intl"
    witness: tuple[str, ...] = ("journald", "audit")  # journald | journald@NAMESPACE | audit; [] for none
    fold_window: float = 300.0  # identical findings within it are one record with a count; 0: off
    heartbeat: float = 300.0  # a journal idle this long gets a signed agent.heartbeat record (coverage proof)


@dataclass(frozen=True, slots=True)
class AssessConfig:
    """The configuration assessment: how often, and which policies (None: shipped, then assess.d)."""

    every: float = 12 * 3600.0
    policies: tuple[Path, ...] | None = None
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Signed policy from the centre: where bundles come from and which root keys are trusted.

    ``source``: ``https://...`` (pulled every ``every``) or ``dir:/path`` (an inbox watched for
    bundles); ``keys``: the root public keys (PEM). No keys: no policy is ever taken.
    """

    source: str | None = None
    keys: tuple[Path, ...] = ()
    every: float = 60.0
    host: str | None = None  # this host's id in a central registry (default: the registry's host.id)
    ca: Path | None = None  # HTTPS: the CA bundle that signs the server (default: the system's)
    cert: Path | None = None  # HTTPS: client certificate and key, for mutual TLS
    key: Path | None = None


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """Evidence back to the centre: a signed bundle of every period (``every``) written under ``to``."""

    every: float = 86400.0
    to: Path | None = None


@dataclass(frozen=True)
class Config:
    """A validated agent config."""

    path: str
    registry: Path
    rules: tuple[Path, ...]
    rules_optional: tuple[Path, ...]
    state_dir: Path
    listen: str = "0.0.0.0:9847"
    web_config: Path | None = None
    queue_size: int = 65536
    collectors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    journal: JournalConfig = JournalConfig()
    forward_syslog: Mapping[str, Any] | None = None
    sigma_skip_unsupported: bool = False
    report_font: Path | None = None
    files: tuple[str, ...] = ()
    assess: AssessConfig = AssessConfig()
    pause_after: float = 5.0  # protect.pause_after: a longer stall of the agent is journaled as a pause
    enforce: EnforceConfig = EnforceConfig()  # noqa: RUF009 - frozen, so one shared default is safe
    policy: PolicyConfig = PolicyConfig()
    export: ExportConfig = ExportConfig()

    @property
    def journal_path(self) -> Path:
        """Where the journal database lives."""
        return self.state_dir / "journal.db"


def parse_duration(value: Any) -> float:
    """Seconds from ``30``, ``30s``, ``5m``, ``2h``, ``1d``, ``500ms``; ValueError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value)) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"bad duration {value!r} (write e.g. 30s, 5m, 2h)")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def _duration(m: LDict, key: str, what: str, problems: Problems, default: float,
              ok: Callable[[float], bool] = lambda s: s >= 0, must: str = "be at least 0") -> float:
    """``m[key]`` in seconds, ``default`` when absent. A value that is no duration, or one ``ok`` refuses (the
    problem says what it ``must``), is a problem at its place; ``default`` stands in until the load fails."""
    if key not in m:
        return default
    try:
        value = parse_duration(m[key])
    except ValueError as exc:
        problems.add(m.at(key), f"{what}: {exc}")
        return default
    if not ok(value):
        problems.add(m.at(key), f"{what} must {must}, not {m[key]!r}")
        return default
    return value


def _merge(base: LDict, over: LDict) -> None:
    for key, value in over.items():
        if isinstance(value, LDict) and isinstance(base.get(key), LDict):
            _merge(base[key], value)
        else:
            base[key] = value
            base.value_where[key] = over.at(key)
            base.key_where[key] = over.key_at(key)


def _path(value: Any, where: Location, base: Path, problems: Problems, what: str) -> Path | None:
    s = expect_str(value, where, problems, what)
    if s is None:
        return None
    p = Path(s)
    return p if p.is_absolute() else base / p


def load_config(path: str | Path, *, extra_dropins: tuple[Path, ...] = ()) -> Config:
    """Load, merge and validate the config; raise LoadErrors listing every problem.

    ``extra_dropins`` (those of the signed policy in force) merge after ``agent.d``.
    """
    main = Path(path)
    doc = load_file(main)
    if doc is None:
        raise LoadError(Location(str(main), 1, 1), "config is empty")
    problems = Problems()
    top = expect_map(doc, Location(str(main), 1, 1), problems, "config", optional=_TOP)
    files = [str(main)]
    dropin_dir = main.parent / "agent.d"
    if top is not None and dropin_dir.is_dir():
        for f in sorted(dropin_dir.glob("*.yaml")):
            over = load_file(f)
            if over is None:
                continue
            o = expect_map(over, Location(str(f), 1, 1), problems, "config drop-in", optional=_TOP)
            if o is not None:
                _merge(top, o)
                files.append(str(f))
    for f in extra_dropins:
        if top is None:
            break
        over = load_file(f)
        if over is None:
            continue
        o = expect_map(over, Location(str(f), 1, 1), problems, "policy drop-in", optional=_TOP)
        if o is None:
            continue
        for key in _NOT_FROM_POLICY:
            if key in o:
                problems.add(o.key_at(key), f"a drop-in from a policy bundle may not set {key}")
        _merge(top, o)
        files.append(str(f))
    if top is None:
        problems.raise_if_any()
        raise AssertionError("unreachable")
    base = main.parent
    registry = _path(top.get("registry", "/etc/dutywatch/registry.yaml"), top.at("registry"), base,
                     problems, "registry")
    if "rules" in top:
        seq = expect_list(top["rules"], top.at("rules"), problems, "rules")
        rules = tuple(p for i, v in enumerate(seq or ()) if (p := _path(v, seq.at(i) if seq else top.where,
                                                                        base, problems, "rules entry")))
        optional: tuple[Path, ...] = ()
    else:
        rules = (shipped_rules_dir(), LOCAL_RULES)
        optional = (LOCAL_RULES,)
    state_dir = _path(top.get("state_dir", "/var/lib/dutywatch"), top.at("state_dir"), base, problems,
                      "state_dir")
    listen = expect_str(top.get("listen", "0.0.0.0:9847"), top.at("listen"), problems, "listen") or ""
    if listen and not re.match(r"^(\[[0-9a-fA-F:.]+\]|[^:\s]*):\d{1,5}$", listen):
        problems.add(top.at("listen"), f"listen must be host:port, not {listen!r}")
    web = top.get("web_config")
    web_config = _path(web, top.at("web_config"), base, problems, "web_config") if web is not None else None
    queue_size = expect_int(top.get("queue_size", 65536), top.at("queue_size"), problems, "queue_size",
                            16, 10_000_000) or 65536
    collectors = _collectors(top, problems)
    journal = _journal(top, problems)
    syslog = None
    if "forward" in top:
        fwd = expect_map(top["forward"], top.at("forward"), problems, "forward", optional=("syslog",))
        if fwd is not None and fwd.get("syslog") is not None:
            from agent.forward.target import parse_target
            try:  # the forwarder's own parser checks every key, with its place
                parse_target(fwd["syslog"], fwd.at("syslog"))
                syslog = fwd["syslog"]
            except LoadError as exc:
                problems.append(exc)
    skip = False
    if "sigma" in top:
        sg = expect_map(top["sigma"], top.at("sigma"), problems, "sigma", optional=("skip_unsupported",))
        if sg is not None and "skip_unsupported" in sg:
            skip = bool(expect_bool(sg["skip_unsupported"], sg.at("skip_unsupported"), problems,
                                    "sigma.skip_unsupported"))
    font = None
    if "report" in top:
        rp = expect_map(top["report"], top.at("report"), problems, "report", optional=("font",))
        if rp is not None and rp.get("font") is not None:
            font = _path(rp["font"], rp.at("font"), base, problems, "report.font")
    assess = _assess(top, base, problems)
    pause_after = 5.0
    if "protect" in top:
        pr = expect_map(top["protect"], top.at("protect"), problems, "protect", optional=("pause_after",))
        if pr is not None:
            pause_after = _duration(pr, "pause_after", "protect.pause_after", problems, pause_after,
                                    lambda s: s == 0 or s >= 1, "be at least 1s (or 0 to turn it off)")
    enforce = parse_enforce(top, problems)
    policy = _policy(top, base, problems)
    export = _export(top, base, problems)
    problems.raise_if_any()
    assert registry is not None and state_dir is not None
    return Config(str(main), registry, rules, optional, state_dir, listen, web_config, queue_size,
                  collectors, journal, syslog, skip, font, tuple(files), assess, pause_after, enforce,
                  policy, export)


def _export(top: LDict, base: Path, problems: Problems) -> ExportConfig:
    if "export" not in top:
        return ExportConfig()
    e = expect_map(top["export"], top.at("export"), problems, "export", required=("to",), optional=("every",))
    if e is None:
        return ExportConfig()
    every = _duration(e, "every", "export.every", problems, 86400.0,
                      lambda s: s >= 60 and not (86400 % s and s % 86400),
                      "divide a day (15m, 1h, 6h, 1d) or be whole days")
    to = _path(e.get("to"), e.at("to"), base, problems, "export.to")
    return ExportConfig(every, to)


def _policy(top: LDict, base: Path, problems: Problems) -> PolicyConfig:
    if "policy" not in top:
        return PolicyConfig()
    p = expect_map(top["policy"], top.at("policy"), problems, "policy",
                   optional=("source", "keys", "every", "host", "ca", "cert", "key"))
    if p is None:
        return PolicyConfig()
    source = expect_str(p.get("source"), p.at("source"), problems, "policy.source", allow_none=True)
    if source is not None and not (source.startswith("https://") or source.startswith("dir:/")):
        problems.add(p.at("source"), f"policy.source must be https://HOST/PATH or dir:/ABSOLUTE/PATH, not "
                                     f"{source!r}")
    seq = expect_list(p["keys"], p.at("keys"), problems, "policy.keys") if "keys" in p else None
    keys = tuple(k for i, v in enumerate(seq or ()) if seq is not None
                 and (k := _path(v, seq.at(i), base, problems, "policy.keys entry")))
    if source is not None and not keys:
        problems.add(p.at("source"), "policy.source needs policy.keys: the root public keys bundles must chain to")
    every = _duration(p, "every", "policy.every", problems, 60.0, lambda s: s >= 1, "be at least 1s")
    host = expect_str(p.get("host"), p.at("host"), problems, "policy.host", allow_none=True)
    paths = {k: (_path(p[k], p.at(k), base, problems, f"policy.{k}") if p.get(k) is not None else None)
             for k in ("ca", "cert", "key")}
    if (paths["cert"] is None) != (paths["key"] is None):
        problems.add(p.where, "policy.cert and policy.key go together (mutual TLS)")
    return PolicyConfig(source, keys, every, host, paths["ca"], paths["cert"], paths["key"])


def _assess(top: LDict, base: Path, problems: Problems) -> AssessConfig:
    if "assess" not in top:
        return AssessConfig()
    a = expect_map(top["assess"], top.at("assess"), problems, "assess", optional=("every", "policies", "enabled"))
    if a is None:
        return AssessConfig()
    every = _duration(a, "every", "assess.every", problems, AssessConfig().every, lambda s: s >= 60, "be at least 1m")
    policies = None
    if "policies" in a:
        seq = expect_list(a["policies"], a.at("policies"), problems, "assess.policies")
        policies = tuple(p for i, v in enumerate(seq or ()) if seq is not None
                         and (p := _path(v, seq.at(i), base, problems, "assess.policies entry")))
    enabled = expect_bool(a.get("enabled", True), a.at("enabled"), problems, "assess.enabled")
    return AssessConfig(every, policies, enabled is not False)


def _collectors(top: LDict, problems: Problems) -> dict[str, dict[str, Any]]:
    out = {k: dict(v) for k, v in _COLLECTORS.items()}
    if "collectors" not in top:
        return out
    cs = expect_map(top["collectors"], top.at("collectors"), problems, "collectors", optional=tuple(_COLLECTORS))
    for name, section in (cs or {}).items():
        if name not in _COLLECTORS or cs is None:
            continue
        sec = expect_map(section, cs.at(name), problems, f"collectors.{name}", optional=tuple(_COLLECTORS[name]))
        for key, value in (sec or {}).items():
            if sec is None or key not in _COLLECTORS[name]:
                continue
            where, what = sec.at(key), f"collectors.{name}.{key}"
            default = _COLLECTORS[name][key]
            if key == "mode":
                if value not in _MODES[name]:
                    problems.add(where, f"{what} must be one of {', '.join(_MODES[name])}, not {value!r}")
                    continue
            elif key == "interval":
                value = _duration(sec, key, what, problems, default, lambda s: s > 0, "be more than 0")
            elif isinstance(default, bool):
                expect_bool(value, where, problems, what)
            elif isinstance(default, list):
                value = list(str_list(value, where, problems, what))
            out[name][key] = value
    return out


def _journal(top: LDict, problems: Problems) -> JournalConfig:
    if "journal" not in top:
        return JournalConfig()
    j = expect_map(top["journal"], top.at("journal"), problems, "journal",
                   optional=("retention_days", "max_size_mb", "checkpoint_every", "crypto", "witness",
                             "fold_window", "heartbeat"))
    if j is None:
        return JournalConfig()
    d = JournalConfig()
    crypto = j.get("crypto", d.crypto)
    if crypto not in ("intl", "gm"):
        problems.add(j.at("crypto"), f"journal.crypto must be intl (SHA-256, Ed25519) or gm (SM3, SM2), "
                                     f"not {crypto!r}")
        crypto = d.crypto
    elif crypto == "gm":
        from agent.crypto.suite import SuiteError, suite

        try:
            suite(crypto)  # SM3 and SM2 must be there now, not fail at the first checkpoint
        except SuiteError as exc:
            problems.add(j.at("crypto"), f"journal.crypto gm cannot be used on this host: {exc}")
    witness = d.witness
    if "witness" in j:
        from agent.journal.witness import parse_witness
        witness = tuple(str_list(j["witness"], j.at("witness"), problems, "journal.witness"))
        for w in witness:
            try:
                parse_witness(w)
            except ValueError as exc:
                problems.add(j.at("witness"), f"journal.witness: {exc}")
    fold = _duration(j, "fold_window", "journal.fold_window", problems, d.fold_window,
                     must="be at least 0 (0 folds nothing)")
    beat = _duration(j, "heartbeat", "journal.heartbeat", problems, d.heartbeat,
                     lambda s: 1 <= s <= 3600, "be between 1s and 1h")
    return JournalConfig(
        expect_int(j.get("retention_days", d.retention_days), j.at("retention_days"), problems,
                   "journal.retention_days", 1) or d.retention_days,
        expect_int(j.get("max_size_mb", d.max_size_mb), j.at("max_size_mb"), problems, "journal.max_size_mb",
                   1) or d.max_size_mb,
        expect_int(j.get("checkpoint_every", d.checkpoint_every), j.at("checkpoint_every"), problems,
                   "journal.checkpoint_every", 1) or d.checkpoint_every,
        crypto,
        witness,
        fold,
        beat,
    )
