"""The agent: builds every stage from the config and runs them until told to stop."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import __version__
from agent.attribution import Attributor
from agent.config import Config
from agent.daemon.collectors import build_collectors
from agent.daemon.folding import Folder
from agent.daemon.guard import PauseDetector, Sender, read_sender, signal_name, stop_requesters, tracer_pid
from agent.daemon.journal_writer import Coalesced, JournalWriter
from agent.daemon.notify import Notifier
from agent.daemon.ownfiles import audit_watches, own_paths
from agent.daemon.pipeline import Pipeline, Stage
from agent.daemon.reloadstate import ReloadOutcome, write_outcome
from agent.daemon.runstate import RunState
from agent.daemon.supervisor import Supervisor
from agent.daemon.watcher import FileWatcher
from agent.engine.engine import Engine
from agent.engine.rules import load_rules
from agent.errors import DutyWatchError, LoadError, LoadErrors, Location
from agent.events import Event, Process
from agent.exporter import Exporter
from agent.journal.errors import JournalCorruptError
from agent.journal.statedir import quarantine_corrupt
from agent.journal.store import Journal
from agent.journal.witness import AuditWitness
from agent.metrics import Metrics
from agent.paths import shipped_rules_dir
from agent.policy.bundle import Verified
from agent.policy.store import Decision
from agent.registry import Registry, load_registry
from agent.strictmodes import load_checked_config
from agent.webconfig import load_web_config
from collectors.base import Collector, Sources, StopEvent

_log = logging.getLogger("dutywatch")
# An alert's head goes to the witnesses at once, but in a storm at most once per this many seconds
# (the latest head, which covers every alert before it).
WITNESS_EVERY = 1.0
STALL_SECONDS = 10.0
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
# SIGCONT ends a wait at once when the agent is resumed after SIGSTOP, so the pause is seen then.
_WAIT_SIGNALS = _SIGNALS | {signal.SIGCONT}
# The main thread's checks that have no event to wait for: a tracer (TracerPid), the admin's
# files changed on disk, folds whose window ran out, health. Every GUARD_EVERY seconds at most,
# and three times within protect.pause_after: a turn (its wait, and work such as a reload) must
# stay well under the pause threshold, and a pause is measured to within a third of it.
GUARD_EVERY = 2.0
# run.json's alive stamp: the start of a gap after a kill is known to within this; the journal's
# own last record bounds it too.
HEARTBEAT_EVERY = 30.0


@dataclass(frozen=True)
class Loaded:
    """A consistent set: config, registry, compiled rules."""

    config: Config
    registry: Registry
    stage: Stage
    rules: int
    channel: Any = None  # what enforcement keeps open (agent.enforce.channel.Channel)
    policy: Verified | None = None  # the signed policy bundle in force, if any


def load_all(config_path: Path, state_dir: Path | None = None) -> Loaded:
    """Load config, the signed policy in force, registry and rules; raise LoadError(s) naming every problem."""
    from agent.policy.store import in_force

    config = load_checked_config(config_path)
    if state_dir is not None:
        from dataclasses import replace
        config = replace(config, state_dir=state_dir)
    config, overlay = in_force(config_path, config)
    loaded = load_parts(config)
    if overlay is not None:
        from dataclasses import replace
        loaded = replace(loaded, policy=overlay.verified)
    return loaded


def load_parts(config: Config) -> Loaded:
    """Registry, rules and assessment policies of a loaded config; LoadErrors names every problem."""
    problems: list[LoadError] = []
    registry = None
    ruleset = None
    try:
        registry = load_registry(config.registry)
    except LoadError as exc:
        problems.append(exc)
    except LoadErrors as exc:
        problems += exc.errors
    try:
        ruleset = load_rules(config.rules, optional=config.rules_optional,
                             sigma_skip_unsupported=config.sigma_skip_unsupported)
        for skipped in ruleset.skipped:
            _log.warning("sigma rule skipped (sigma.skip_unsupported is on): %s", skipped)
    except LoadError as exc:
        problems.append(exc)
    except LoadErrors as exc:
        problems += exc.errors
    if config.assess.enabled:
        # A bad assessment policy fails the load like a bad rule: the child would refuse it anyway.
        from agent.assess.policy import load_policies, policy_entries
        try:
            load_policies(*policy_entries(config.assess.policies))
        except LoadError as exc:
            problems.append(exc)
        except LoadErrors as exc:
            problems += exc.errors
    channel = None
    if registry is not None:
        from agent.enforce.channel import derive
        channel, bad = derive(config, registry)
        problems += bad
    if problems or registry is None or ruleset is None:
        raise LoadErrors(problems)
    return Loaded(config, registry, Stage(Attributor(registry), Engine(ruleset)), len(ruleset.rules), channel)


class Agent:
    """One running agent. ``run()`` blocks until SIGTERM/SIGINT or ``stop()``."""

    def __init__(self, config_path: Path, *, state_dir: Path | None = None,
                 clock: Callable[[], float] = time.time, sources: Sources | None = None,
                 collectors: list[Collector] | None = None, notifier: Notifier | None = None,
                 assess: Any = None) -> None:
        self.config_path = config_path
        self.state_dir_override = state_dir
        self.clock = clock
        self.loaded = load_all(config_path, state_dir)
        cfg = self.loaded.config
        # The shipped example registry names made-up people: nothing is attributed to it, and
        # nothing is monitored, until the admin replaces it (the registry file is watched).
        self.held = self.loaded.registry.example
        self.host = self._host_id(self.loaded.registry)
        self.stop_event: threading.Event = StopEvent()  # collectors wait on its descriptor beside their own
        self.reload_requested = threading.Event()
        self.reload_generation = 0
        self.notifier = notifier or Notifier()
        self.runstate = RunState(cfg.state_dir)
        self._collectors = collectors
        self.collectors: list[Collector] = []
        self.metrics = Metrics(__version__, lambda: {c.name: c.health for c in self.collectors})
        self._host_info(self.loaded.registry)
        self._expect_findings(self.loaded)
        self.metrics.set_rules_loaded(self.loaded.rules)
        self.journal = self._open_journal(cfg)
        stats = self.journal.stats()
        self.metrics.set_journal(stats.records, stats.size_bytes)
        self.forwarder = self._forwarder(cfg)
        from agent.journal.witness import parse_witness
        # The audit trail witnesses only while the audit source runs (it owns the kernel audit settings).
        audit_on = bool(cfg.collectors.get("audit", {}).get("enabled", False))
        self.witnesses = [parse_witness(w) for w in cfg.journal.witness if w != "audit" or audit_on]
        # An alert's head goes to the witnesses at once; in a storm of them, the latest head once a second.
        self._alert_head = Coalesced(self._witness_head, WITNESS_EVERY)
        self.writer = JournalWriter(self.journal, self.metrics, clock=clock,
                                    on_commit=self._forward_batch, on_checkpoint=self._forward_checkpoint,
                                    on_idle=self._alert_head.due)
        self.pipeline = Pipeline(self.loaded.stage, self.metrics, capacity=cfg.queue_size, clock=clock)
        self.folder = Folder(self.writer.put, cfg.journal.fold_window, clock=clock)
        self.sources = sources or Sources(clock=clock)
        self.enforcer = self._enforcer(self.loaded)
        self.enforcer_registry = self.loaded.registry
        self.pipeline.sinks.append(self._to_enforcer)
        web = load_web_config(cfg.web_config) if cfg.web_config is not None else None
        self.exporter = Exporter(self.metrics, cfg.listen, web_config=web, health_check=self.health)
        self.watcher = FileWatcher(self._watched_paths(cfg))
        self._worker: threading.Thread | None = None
        self._supervisor: Supervisor | None = None
        self._assess_config = cfg.assess
        self.assessor = self._assessor(cfg) if assess is None else assess
        self.stop_by: dict[str, Any] = {}
        self._main: int | None = None  # the thread that waits for signals in run()
        self.reload_why = "SIGHUP"
        self.metrics.set_policy(*self._policy_label(self.loaded))
        self.policy_source = self._policy_source(cfg)
        self.exports = self._exports(cfg)

    # -- construction helpers ---------------------------------------------
    def _enforcer(self, loaded: Loaded) -> Any:
        from agent.enforce.enforcer import Enforcer
        from agent.enforce.media import MediaGuard
        cfg, host = loaded.config, loaded.registry.host
        e = Enforcer(cfg.enforce, loaded.channel, state_dir=cfg.state_dir, host=self.host, custodian=host.custodian,
                     unit=host.unit, record=self.writer.put, metrics=self.metrics, clock=self.clock,
                     media=MediaGuard(cfg.enforce.media_unregistered, self.sources.sys_root))
        e.next = self.folder.put
        e.emit = self.pipeline.offer
        e.wake = self.wake  # its state file is written on the main thread's next tick: at once, not at the next check
        e.gate, e.copy = self._guards(loaded, e)
        e.person = _people(loaded.registry)
        return e

    def _guards(self, loaded: Loaded, e: Any) -> tuple[Any, Any]:
        """The media gate and the copy guard the config asks for, built on the registry's media and assets."""
        cfg, reg = loaded.config, loaded.registry
        gate = copy = None
        if cfg.enforce.active and cfg.enforce.media_unregistered != "off":
            from agent.enforce.mediagate import MediaGate
            gate = MediaGate(reg, e.gate_media, sys_root=self.sources.sys_root, removed=e.media_removed)
        if cfg.enforce.active and cfg.enforce.copy:
            from agent.enforce.copyproc import CopyGuardProcess
            roots = cfg.collectors.get("media", {}).get("roots", ["/media", "/run/media", "/mnt"])
            # A process of its own: the kernel's questions never wait for the pipeline's turn at the interpreter.
            copy = CopyGuardProcess(reg, roots, self.sources.sys_root, e.copy_denied,
                                    dryrun=cfg.enforce.mode == "dryrun")
            copy.on_lost = lambda: e.metrics.enforced("copy", "failed")
        return gate, copy

    def _to_enforcer(self, record: dict[str, Any]) -> None:
        self.enforcer.put(record)

    @staticmethod
    def _host_id(registry: Registry) -> str:
        if registry.example:
            return socket.gethostname() or "unknown"
        return registry.host.id or "unknown"

    def _host_info(self, registry: Registry) -> None:
        self.metrics.set_registry_unconfigured(registry.example)
        if registry.example:
            self.metrics.set_host(self._host_id(registry), "", "", "", "")
            return
        h = registry.host
        self.metrics.set_host(h.id, h.unit, h.department, str(h.level) if h.level is not None else "", h.zone)

    def _status(self) -> str:
        """systemd's status line: what is in force, or what the admin must do first."""
        if self.held:
            return (f"STATUS=not monitoring: {self.loaded.config.registry} is the shipped example registry; "
                    "describe this host, its units and people there and remove 'example: true' "
                    "(dutywatch check), then systemctl reload dutywatch")
        return f"STATUS=watching with {self.loaded.rules} rules"

    def _expect_findings(self, loaded: Loaded) -> None:
        if loaded.registry.example:
            return
        # Series exist at 0 from the start, so increase() sees a rule's first finding.
        unit = loaded.registry.host.unit
        for rule in loaded.stage.engine.ruleset.rules:
            self.metrics.expect_rule(rule.id, rule.severity, rule.action, unit)

    def _open_journal(self, cfg: Config) -> Journal:
        try:
            return Journal.from_settings(cfg.state_dir, cfg.journal, host=self.host, clock=self.clock)
        except JournalCorruptError as exc:
            moved = quarantine_corrupt(cfg.journal_path, self.clock)
            _log.error("%s; kept the damaged file as %s and started a new journal", exc, moved)
            j = Journal.from_settings(cfg.state_dir, cfg.journal, host=self.host, clock=self.clock)
            j.append({"type": "lifecycle", "time": self.clock(), "host": self.host, "kind": "journal.quarantined",
                      "detail": {"moved_to": str(moved), "reason": exc.detail}})
            return j

    def _forwarder(self, cfg: Config) -> Any:
        if cfg.forward_syslog is None:
            return None
        from agent.forward.forwarder import SyslogForwarder
        from agent.forward.target import parse_target
        target = parse_target(cfg.forward_syslog, Location(cfg.path))
        self.metrics.add_forward_target(target.label)
        return SyslogForwarder(target, stats=self.metrics, clock=self.clock)

    def _forward_batch(self, records: list[dict[str, Any]]) -> None:
        if self.forwarder is not None:
            for r in records:
                if r.get("type") == "finding":
                    self.forwarder.submit(r)
        if self.witnesses and any(r.get("action") in ("alert", "block") or r.get("kind") == "agent.tamper"
                                  for r in records):
            # Not signed yet, but held elsewhere: cutting the journal back behind an alert shows at start.
            self._alert_head.ask()

    def _witness_head(self) -> None:
        h = self.journal.head
        self._witness("head", {"seq": h.seq, "hash": h.hash, "time": self.clock()})

    def _forward_checkpoint(self, head: dict[str, Any]) -> None:
        if self.forwarder is not None:
            self.forwarder.submit_checkpoint(head)
        self._witness("checkpoint", head)
        if int(head["seq"]) >= self.journal.head.seq:
            self._alert_head.owed = False  # the signed head covers every alert journaled so far

    def _witness(self, kind: str, head: dict[str, Any]) -> None:
        for w in self.witnesses:
            w.send(kind, head, host=self.host, key=self.journal.fingerprint, journal=str(self.journal.path))

    def _check_witness(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Compare the journal with the last head each witness holds; a journal behind it was rolled back.

        Runs before the writer thread starts (it reads the journal); returns the tamper reports to make.
        """
        found: list[tuple[str, str, dict[str, Any]]] = []
        for w in self.witnesses:
            if isinstance(w, AuditWitness):
                continue  # write-only
            if not w.available():
                _log.warning("witness %s: %s is missing; journal heads are not witnessed there", w.name,
                             w.socket_path)
                continue
            try:
                heads = w.heads(self.journal.fingerprint, last=1)
            except (OSError, subprocess.SubprocessError) as exc:
                _log.error("witness %s: cannot read the witnessed heads: %s", w.name, exc)
                continue
            bad = self.journal.first_missing(heads)
            if bad is None:
                continue
            seen, why = bad
            head = self.journal.head
            found.append(("journal_rolled_back",
                          f"the journal does not hold the head witnessed by {w.name} (seq {seen.seq}, hash "
                          f"{seen.hash[:16]}…): {why}; the journal's head is seq {head.seq}",
                          {"witness": w.name, "witnessed_head": {"seq": seen.seq, "hash": seen.hash,
                                                                 "time": seen.time, "kind": seen.kind},
                           "journal_head": {"seq": head.seq, "hash": head.hash}}))
        return found

    @staticmethod
    def _watched_paths(cfg: Config) -> list[Path]:
        """The admin's files, whose change on disk reloads the agent.

        The shipped packs are not among them: they change only with the package, whose
        postinst restarts the agent once every file is in place (watching them made the old
        agent load half-unpacked packs during an upgrade).
        """
        from agent.policy.store import CURRENT, policy_dir

        pol = policy_dir(cfg).resolve()
        paths = [Path(p) for p in cfg.files]
        paths.append(Path(cfg.path).parent / "agent.d")
        paths.append(cfg.registry)
        shipped = shipped_rules_dir().resolve()
        paths += [Path(r) for r in cfg.rules if Path(r).resolve() != shipped]
        # The policy's files are written anew from the signed bundle at every load: the bundle in force
        # is what is watched, not its copies (watching those would reload after every reload).
        paths = [p for p in paths if not p.resolve().is_relative_to(pol)]
        if cfg.policy.keys:
            paths.append(pol / CURRENT)
            paths += list(cfg.policy.keys)
        if cfg.web_config is not None:
            paths.append(cfg.web_config)
        if cfg.assess.enabled:
            from agent.assess.policy import policy_entries
            paths += policy_entries(cfg.assess.policies)[0]
        return paths

    def _reload_assessor(self, cfg: Config) -> None:
        """A changed assess section gets a new assessor; otherwise the policies may have changed: run again."""
        if self.held:  # nothing runs on the example registry; _start_monitoring starts it later
            self._assess_config = cfg.assess
            self.assessor = self._assessor(cfg)
            return
        if self._assess_config == cfg.assess:
            if self.assessor:
                self.assessor.request()
            return
        if self.assessor:
            self.assessor.stop()
        self.assessor = self._assessor(cfg)
        if self.assessor and self._worker is not None:
            self.assessor.start()

    def _assessor(self, cfg: Config) -> Any:
        self._assess_config = cfg.assess
        if not cfg.assess.enabled:
            return None
        from agent.daemon.assessor import Assessor
        return Assessor(state_dir=cfg.state_dir, host=self.host, every=cfg.assess.every,
                        policies=cfg.assess.policies, emit=self._inventoried, record=self.writer.put,
                        on_counts=self.metrics.set_assessment, clock=self.clock,
                        unit=self.loaded.registry.host.unit, department=self.loaded.registry.host.department)

    def _inventoried(self, event: Event) -> object:
        """An assessment's event to the pipeline, unless the audit source reported that module change already."""
        for c in self.collectors:
            reported = getattr(c, "reported_module", None)
            if reported is not None and reported(event):
                return True
        return self.pipeline.offer(event)

    # -- signed policy ----------------------------------------------------
    @staticmethod
    def _policy_label(loaded: Loaded) -> tuple[int | None, str | None]:
        v = loaded.policy
        return (v.version, v.signer) if v is not None else (None, None)

    def _policy_source(self, cfg: Config) -> Any:
        if cfg.policy.source is None or not cfg.policy.keys:
            return None
        from agent.policy.source import PolicySource
        return PolicySource(cfg.policy, self.offer_policy, clock=self.clock)

    def _exports(self, cfg: Config) -> Any:
        if cfg.export.to is None:
            return None
        from agent.daemon.exports import PeriodicExport
        from agent.journal.store import KEY_FILE
        return PeriodicExport(every=cfg.export.every, to=cfg.export.to, state_dir=cfg.state_dir,
                              journal_path=self.journal.path, key_path=cfg.state_dir / KEY_FILE,
                              host=lambda: self.host, put=self.writer.put, clock=self.clock,
                              on_result=self.metrics.evidence_exported)

    def offer_policy(self, data: bytes, origin: str) -> Decision:
        """Judge a policy bundle from ``origin``; on acceptance, reload with it. Journaled either way."""
        from agent.policy.store import Judge

        loaded = self.loaded
        judge = Judge(self.config_path, loaded.config,
                      current_unit=lambda: None if self.held else loaded.registry.host.unit,
                      trial=self._trial_load)
        decision = judge.offer(data)
        if decision.reason == "same":
            return decision
        v = decision.verified
        detail: dict[str, Any] = {"origin": origin, "reason": decision.reason, "message": decision.detail}
        if v is not None:
            detail.update({"version": v.version, "signer": v.signer, "signer_key": v.signer_fingerprint,
                           "signer_units": list(v.signer_units) if v.signer_units is not None else None,
                           "scope": list(v.scope), "created": v.created, "sha256": v.digest,
                           "files": [f.path for f in v.files]})
        kind = "policy.applied" if decision.accepted else "policy.refused"
        if decision.accepted:
            _log.info("policy accepted from %s: %s", origin, decision.detail)
        else:
            kept = judge.set_aside(data, decision)
            detail["kept_at"] = str(kept)
            self.metrics.policy_refused_inc(decision.reason)
            _log.error("policy bundle from %s refused (%s): %s; the policy in force stays", origin,
                       decision.reason, decision.detail)
        now = self.clock()
        self.writer.put({"type": "lifecycle", "time": now, "host": self.host, "kind": kind, "detail": detail})
        if not self.held:
            self.pipeline.offer(Event(kind, now, "agent", detail=f"{decision.reason}: {decision.detail} "
                                                                   f"(from {origin})"))
        if decision.accepted:
            self.request_reload(f"policy version {v.version if v else '?'}")
        return decision

    def request_reload(self, why: str) -> None:
        """Reload on the main thread as soon as it wakes (safe from any thread); wake it now."""
        self.reload_why = why
        self.reload_requested.set()
        self.wake()

    def wake(self) -> None:
        """End the main thread's wait now, so it does what is due (safe from any thread)."""
        if self._main is not None and self._main != threading.get_ident():
            # The main thread waits in sigtimedwait for up to GUARD_EVERY; SIGCONT ends the wait.
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_kill(self._main, signal.SIGCONT)

    def _trial_load(self, config: Config) -> None:
        new = load_parts(config)
        if new.registry.example:
            raise LoadError(Location(str(config.registry), 1, 1), "the registry is the shipped example")
        if config.journal.crypto != self.journal.suite.name:
            raise LoadError(Location(config.path), f"journal.crypto {config.journal.crypto} differs from the running "
                                                   f"journal's {self.journal.suite.name}")

    # -- health -----------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        """For /healthz and the systemd watchdog: is the pipeline moving?"""
        if self.pipeline.stalled(STALL_SECONDS):
            return False, f"pipeline stalled: {self.pipeline.depth()} events waiting, none processed " \
                          f"for over {STALL_SECONDS:.0f} s"
        return True, "ok"

    # -- lifecycle --------------------------------------------------------
    def lifecycle(self, kind: str, detail: dict[str, Any]) -> None:
        """Journal a lifecycle record and run its event through the rules."""
        now = self.clock()
        self.writer.put({"type": "lifecycle", "time": now, "host": self.host, "kind": kind, "detail": detail})
        if kind in ("agent.start", "agent.stop", "agent.reload", "agent.tamper") and not self.held:
            text = detail.get("message") if isinstance(detail.get("message"), str) else None
            self.pipeline.process_now(Event(kind, now, "agent", detail=text))

    def tamper(self, reason: str, message: str, detail: dict[str, Any], actor: Sender | None = None) -> None:
        """Journal an attempt on the agent or its evidence (``agent.tamper``), count it, run it through the rules.

        ``actor`` is the process that did it, when known: its event then carries
        the process group, so attribution names the operator.
        """
        now = self.clock()
        record = {"reason": reason, "message": f"{reason}: {message}", **detail}
        if actor is not None:
            record["by"] = actor.as_dict()
        self.metrics.tampered(reason)
        _log.warning("tamper (%s): %s", reason, message)
        self.writer.put({"type": "lifecycle", "time": now, "host": self.host, "kind": "agent.tamper",
                         "detail": record})
        if self.held:  # journaled above; no rule runs on the example registry's made-up attribution
            return
        self.pipeline.process_now(Event("agent.tamper", now, "agent", process=actor.process if actor else Process(),
                                        detail=f"{reason}: {message}"))

    def start(self) -> None:
        """Start every stage; journal the start and any gap left by the last run."""
        cfg = self.loaded.config
        now = self.clock()
        gap = self.runstate.gap_against(now, self.journal.last_lifecycle(), self.journal.last_time())
        last_alive = self.runstate.last_alive() or (gap.since if gap is not None else None)
        rolled_back = self._check_witness()
        self.runstate.beat(now)
        self.writer.start()
        self.lifecycle("agent.start", {"version": __version__, "rules": self.loaded.rules,
                                       "config": cfg.path, "registry": str(cfg.registry), "pid": os.getpid()})
        for reason, message, detail in rolled_back:
            self.tamper(reason, message, detail)
        if not self.held:
            self.enforcer.start()
        if gap is not None:
            self.tamper("unclean_stop", gap.describe(), {"since": gap.since, "until": gap.until,
                                                         "previous_pid": gap.pid, "run_state": gap.run_state})
        self._worker = threading.Thread(target=self.pipeline.run, args=(self.stop_event,), name="pipeline",
                                        daemon=True)
        self._worker.start()
        self.exporter.start()
        if self.forwarder is not None:
            self.forwarder.start()
        if self.policy_source is not None:
            self.policy_source.start()
        if self.exports is not None:
            self.exports.start()
        if self.held:
            self.lifecycle("agent.degraded", {"reason": "registry_unconfigured", "monitoring": False,
                                              "message": "not monitoring: the registry is the shipped example"})
            _log.warning("not monitoring: %s is the shipped example registry (example: true); describe this host, "
                         "its units and people there, remove that line and reload", cfg.registry)
        else:
            self._start_monitoring(last_alive)
        self.notifier.send("READY=1", self._status())
        _log.info("agent started: host %s, %d rules, %d collectors, metrics on %s",
                  self.host, self.loaded.rules, len(self.collectors), cfg.listen)

    def _start_monitoring(self, last_alive: float | None) -> None:
        """Collectors, their supervisor and the assessor: at start, or when a real registry arrives."""
        cfg = self.loaded.config
        extra = tuple(a.prefix for a in self.loaded.registry.assets)
        own = own_paths(self.loaded.stage.engine.ruleset.lists)
        self.collectors = self._collectors if self._collectors is not None else \
            build_collectors(cfg.collectors, self.sources, extra, tuple(a.path for a in self.loaded.registry.assets),
                             own)
        if last_alive is not None:  # files changed while nothing watched are looked at again
            for c in self.collectors:
                rescan = getattr(c, "rescan_after", None)
                if callable(rescan):
                    rescan(last_alive)
        self._supervisor = Supervisor(self.collectors, self.pipeline.offer, self.stop_event)
        self._supervisor.start()
        if self.assessor:
            self.assessor.start()

    def reload(self, why: str) -> bool:
        """Load config, registry and rules again; keep the running set if the new one is bad.

        Every attempt is written to ``reload.json`` (``dutywatch reload`` waits for it and fails
        when the set was rejected) and to systemd's status line, which always names the rules
        in force.
        """
        try:
            new = load_all(self.config_path, self.state_dir_override)
            if new.config.journal.crypto != self.journal.suite.name:
                raise LoadError(Location(new.config.path),
                                f"journal.crypto changed from {self.journal.suite.name} to "
                                f"{new.config.journal.crypto}: a journal never mixes suites; the running journal "
                                "keeps its suite (to switch, stop the agent and start a new journal)")
        except (LoadError, LoadErrors) as exc:
            errors = [str(e) for e in (exc.errors if isinstance(exc, LoadErrors) else [exc])]
            for line in errors:
                _log.error("reload rejected: %s", line)
            self.metrics.rules_reloaded(False)
            self.writer.put({"type": "lifecycle", "time": self.clock(), "host": self.host, "kind": "agent.reload",
                             "detail": {"ok": False, "why": why, "errors": errors[:50]}})
            self._reload_done(False, why, errors)
            return False
        if new.registry.example and not self.held:
            err = (f"{new.config.registry}:1:1: the registry is the shipped example (example: true); the registry "
                   "in force is kept")
            _log.error("reload rejected: %s", err)
            self.metrics.rules_reloaded(False)
            self.writer.put({"type": "lifecycle", "time": self.clock(), "host": self.host, "kind": "agent.reload",
                             "detail": {"ok": False, "why": why, "errors": [err]}})
            self._reload_done(False, why, [err])
            return False
        leaving_example = self.held and not new.registry.example
        old_config = self.loaded.config
        self.loaded = new
        if leaving_example:
            self.held = False
            self.host = self._host_id(new.registry)
        self.pipeline.stage = new.stage
        if new.config.enforce != self.enforcer.cfg or new.channel != self.enforcer.base_channel:
            old = self.enforcer
            old.shutdown()
            self.enforcer = self._enforcer(new)
            if not self.held:
                self.enforcer.start()
        elif leaving_example:  # the enforcer never started on the example registry
            self.enforcer = self._enforcer(new)
            self.enforcer.start()
        elif not self.held and _guarded(new.registry) != _guarded(self.enforcer_registry):
            # New assets or sticks in the registry: the guards judge by the new one; blocks stay.
            self.enforcer.swap_guards(*self._guards(new, self.enforcer))
        self.enforcer_registry = new.registry
        self.enforcer.person = _people(new.registry)
        globs = tuple(a.path for a in new.registry.assets)
        for c in self.collectors:
            set_assets = getattr(c, "set_assets", None)
            if set_assets is not None:
                set_assets(globs)  # the files collector indexes the registry's assets anew
        self._host_info(new.registry)
        self._expect_findings(new)
        self.metrics.set_rules_loaded(new.rules)
        self.metrics.set_policy(*self._policy_label(new))
        self.metrics.rules_reloaded(True)
        self.watcher.reset(self._watched_paths(new.config))
        if new.config.policy != old_config.policy:
            if self.policy_source is not None:
                self.policy_source.stop()
            self.policy_source = self._policy_source(new.config)
            if self.policy_source is not None:
                self.policy_source.start()
        if new.config.export != old_config.export:
            if self.exports is not None:
                self.exports.stop()
            self.exports = self._exports(new.config)
            if self.exports is not None:
                self.exports.start()
        self._reload_assessor(new.config)
        assets = tuple(a.prefix for a in new.registry.assets)
        for c in self.collectors:
            # The agent's own files as the new packs list them, watched for changes by the audit source
            # (the files collector's trees for them are set at start).
            if hasattr(c, "own_paths"):
                c.own_paths = audit_watches(own_paths(new.stage.engine.ruleset.lists))
            # A collector that derives kernel rules from the registry (audit watches) rebuilds them.
            update = getattr(c, "set_asset_paths", None)
            if update is not None:
                update(assets)
        self.lifecycle("agent.reload", {"ok": True, "why": why, "rules": new.rules,
                                        "message": f"reloaded ({why}): {new.rules} rules"})
        _log.info("reloaded (%s): %d rules", why, new.rules)
        if leaving_example:
            self._start_monitoring(self.runstate.last_alive())
            _log.info("monitoring started: the registry describes host %s", self.host)
        self._reload_done(True, why, [])
        return True

    def _reload_done(self, ok: bool, why: str, errors: list[str]) -> None:
        """Tell ``dutywatch reload`` and systemd's status line what the attempt left in force."""
        self.reload_generation += 1
        now = self.clock()
        try:
            write_outcome(self.loaded.config.state_dir, ReloadOutcome(
                os.getpid(), self.reload_generation, ok, why, self.loaded.rules, now, tuple(errors)))
        except OSError as exc:
            _log.error("cannot record the reload outcome: %s", exc.strerror)
        status = self._status()
        if not ok:
            status += f"; a reload was rejected ({len(errors)} problem(s), first: {errors[0] if errors else '?'})"
        self.notifier.send(status)

    def stop(self) -> None:
        """Ask the agent to stop (safe from any thread)."""
        self.stop_event.set()
        self.wake()

    def shutdown(self) -> None:
        """Stop collectors, drain the queue, journal the stop, sign and close."""
        self.notifier.send("STOPPING=1")
        self.stop_event.set()
        self.pipeline.wake()
        if self.policy_source is not None:
            self.policy_source.stop()
        if self.exports is not None:
            self.exports.stop()
        if self.assessor:
            self.assessor.stop()
        if self._supervisor is not None:
            self._supervisor.join(5.0)
        if self._worker is not None:
            self._worker.join(60.0)
        # A collector that outlived its join may have queued more after the worker ended: those are
        # evaluated here, and later offers refused and counted, so the stop record's counts are exact.
        left = self.pipeline.close(self._worker is None or not self._worker.is_alive())
        if left:
            _log.error("pipeline worker did not end within 60 s; %d events still queued", left)
        # The stop event's own findings come before the stop record, which counts them.
        now = self.clock()
        if not self.held:
            self.pipeline.process_now(Event("agent.stop", now, "agent", detail="clean stop"))
        self.folder.flush()
        if not self.held:
            self.enforcer.shutdown()
        self.writer.put({"type": "lifecycle", "time": now, "host": self.host, "kind": "agent.stop",
                         "detail": {"message": "clean stop", "events": self.pipeline.processed,
                                    "findings": self.pipeline.findings, **self.stop_by}})
        self.writer.stop()
        self.runstate.beat(self.clock(), clean=True)
        if self.forwarder is not None:
            self.forwarder.stop(5.0)
        self.exporter.stop()
        _log.info("agent stopped: %d events, %d findings", self.pipeline.processed, self.pipeline.findings)

    def run(self, install_signals: bool = True) -> int:
        """Start, then watch signals, files, health, pauses, tracers and the watchdog until stopped.

        With ``install_signals`` the stop and reload signals are blocked in every
        thread and taken here with ``sigtimedwait``, which says who sent each.
        """
        if install_signals:
            signal.pthread_sigmask(signal.SIG_BLOCK, _WAIT_SIGNALS)
            self._main = threading.get_ident()
        self.start()
        cfg = self.loaded.config
        guard_every = min(GUARD_EVERY, cfg.pause_after / 3) if cfg.pause_after > 0 else GUARD_EVERY
        pauses = PauseDetector(cfg.pause_after, wall=self.clock)
        traced_by = 0
        now = time.monotonic()
        next_guard, next_beat, next_dog = now, now + HEARTBEAT_EVERY, now
        try:
            while not self.stop_event.is_set():
                # Sleep until the next thing that is due; signals (with their sender) end the wait early.
                interval = self.notifier.watchdog_interval
                due = min(next_guard, next_beat, next_dog if interval else next_beat)
                timeout = max(0.0, due - time.monotonic())
                if install_signals:
                    info = signal.sigtimedwait(_WAIT_SIGNALS, timeout)
                    # Interrupted (SIGSTOP/SIGCONT) just as the timeout ran out, CPython returns
                    # an unfilled siginfo rather than None: only a signal asked for is one.
                    if info is not None and info.si_signo in _SIGNALS:
                        self._on_signal(info.si_signo, info.si_pid, info.si_uid)
                elif self.stop_event.wait(timeout):
                    break
                now = time.monotonic()
                if not self.held:
                    self.enforcer.tick()
                pause = pauses.tick()
                if pause is not None:
                    self.tamper("paused", pause.describe(), {"since": pause.since, "until": pause.until,
                                                             "seconds": round(pause.seconds, 3)})
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    why, self.reload_why = self.reload_why, "SIGHUP"
                    self.reload(why)
                if now >= next_guard:
                    next_guard = now + guard_every
                    self.folder.tick()
                    tracer = tracer_pid()
                    if tracer and tracer != traced_by:
                        who = read_sender(tracer, None)
                        self.tamper("ptrace", f"the agent is traced by {who.describe()}", {}, who)
                    traced_by = tracer
                    if not self.held:
                        self.writer.heartbeat(self.clock(), self.loaded.config.journal.heartbeat,
                                              {"pid": os.getpid(), "events": self.pipeline.processed})
                    changed = self.watcher.changed()
                    if changed:
                        self.writer.put({"type": "lifecycle", "time": self.clock(), "host": self.host,
                                         "kind": "config.changed", "detail": {"files": changed[:50]}})
                        self.reload("change on disk: " + ", ".join(changed[:5]))
                ok, _ = self.health()
                self.metrics.set_stalled(not ok)
                if now >= next_beat:
                    next_beat = now + HEARTBEAT_EVERY
                    self.runstate.beat(self.clock())
                if interval and now >= next_dog:
                    next_dog = now + interval
                    if ok:
                        self.notifier.send("WATCHDOG=1")
        finally:
            self.shutdown()
        return 0

    def _on_signal(self, signo: int, pid: int, uid: int) -> None:
        """A stop or reload signal, judged by who sent it."""
        if signo == signal.SIGHUP:
            self.reload_requested.set()
            return
        name = signal_name(signo)
        if pid == 0 or pid == os.getpid():
            self.stop_by = {"signal": name, "by": "terminal" if pid == 0 else "the agent"}
        else:
            who = read_sender(pid, uid)
            if who.service_manager or pid == os.getppid():
                # The init system acting for the unit, or whatever started this agent and supervises it.
                by = "service manager" if who.service_manager else "parent"
                self.stop_by = {"signal": name, "by": by, "sender": who.as_dict()}
                asked = self._stop_requesters()
                if asked:
                    self.stop_by["requested_by"] = asked
            else:
                self.stop_by = {"signal": name, "by": "process", "sender": who.as_dict()}
                self.tamper("signal", f"{name} sent to the agent by {who.describe()}", {"signal": name}, who)
        self.stop_event.set()


    def _stop_requesters(self) -> list[dict[str, Any]]:
        """Who asked the service manager for this stop (``systemctl stop`` still waiting), with their operator."""
        from agent.packages import PackageOwners
        from collectors.procfs import read_unit
        unit = read_unit("/proc/self") or ""
        out: list[dict[str, Any]] = []
        for r in stop_requesters(unit if unit.endswith(".service") else "dutywatch.service", PackageOwners())[:4]:
            op, _ = self.loaded.stage.attribute.operator(r.process.loginuid, r.process.uid)
            out.append({**r.as_dict(), "operator": op.account, "operator_name": op.name, "known": op.known})
            _log.info("stop asked through the service manager by %s (%s)", r.describe(), op.name or op.account)
        return out


def _people(registry: Any) -> Callable[[int], str | None]:
    """Who a uid is, by the registry's people (who sent a packet the enforcement table blocked first)."""
    people = {p.uid: str(p.name) for p in registry.people if p.uid is not None}
    return lambda uid: people.get(uid, f"uid {uid}")


def _guarded(registry: Registry) -> tuple[Any, ...]:
    """What the media gate and the copy guard judge by."""
    return registry.assets, registry.media, registry.host.level, tuple(registry.people)


def run_agent(config_path: Path, state_dir: Path | None = None) -> int:
    """Entry point of ``dutywatch run``."""
    try:
        agent = Agent(config_path, state_dir=state_dir)
    except (LoadError, LoadErrors) as exc:
        for e in (exc.errors if isinstance(exc, LoadErrors) else [exc]):
            print(e, flush=True)
        return 1
    except DutyWatchError as exc:
        _log.error("%s", exc)
        return 1
    cfg = agent.loaded.config
    print(f"DutyWatch {__version__} on host {agent.host}: metrics at http://{cfg.listen}/metrics, "
          f"journal {cfg.journal_path}", flush=True)
    print(f"  query:  dutywatch events --config {cfg.path} --state-dir {cfg.state_dir} --since 1h", flush=True)
    print(f"  verify: dutywatch verify --journal {cfg.journal_path}", flush=True)
    return agent.run()
