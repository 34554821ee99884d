"""The enforcer: turns ``action: block`` findings into narrow, journaled, reversible enforcements.

It sits between the pipeline and the journal (a finding sink). A block finding
is acted on first (the block is in force before the finding is written), the
finding gets an ``enforcement`` field naming what was done, and an
``enforce.action`` lifecycle record follows it in the journal with the
finding's seq, the rule, until when, and who can lift it. Each lifting (TTL,
``dutywatch enforce lift ID``, the stop policy, a restart) is an
``enforce.lift`` record. In ``dryrun`` the same records say what would have
been done, and nothing reaches the kernel.

Reactive blocks are put in force by the kernel itself (``network.reactive:
kernel``, the default): the table blocks a forbidden destination at its
first packet and logs it; the enforcer adopts that block at once (state,
lease) and journals it when the block rule's finding about that connection
confirms it, with the finding's seq, rule, operator and TTL. A block no rule
confirms within ``CONFIRM_WITHIN`` seconds is lifted, and both halves are
journaled: the rules, not the kernel, decide what stays blocked; the kernel
only keeps the offender from going on while they judge.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.enforce.channel import ANY4, ANY6, Channel
from agent.enforce.nft import Elements, NftError, NftTable
from agent.enforce.settings import EnforceConfig
from agent.enforce.state import Enforcement, Saved, alive, load, save, take_requests
from agent.metrics import Metrics

_log = logging.getLogger("dutywatch.enforce")
Record = dict[str, Any]
_NET_SET = {"network": "dest", "zone": "zone", "wide": "wide", "isolate": "iso"}
CONFIRM_WITHIN = 5.0  # seconds a block the kernel made waits for a block rule's finding before it is lifted


class Enforcer:
    """See the module docstring. ``put`` is the finding sink; ``tick`` runs from the agent's main loop."""

    def __init__(self, cfg: EnforceConfig, channel: Channel, *, state_dir: Path, host: str,
                 custodian: str | None, unit: str | None, record: Callable[[Record], None], metrics: Metrics,
                 clock: Callable[[], float] = time.time, table: NftTable | None = None,
                 media: Any = None) -> None:
        self.cfg = cfg
        self.wake: Callable[[], None] | None = None  # asks for a tick now (the agent's main thread)
        self.channel = channel
        self.base_channel = channel  # as derived from the config (a reload compares with this)
        self.state_dir = state_dir
        self.host = host
        self.custodian = custodian
        self.unit = unit
        self.record = record
        self.metrics = metrics
        self.clock = clock
        self.table = table if table is not None or cfg.mode != "enforce" else NftTable(cfg.table)
        self.media = media
        self.gate: Any = None  # the media gate (agent.enforce.mediagate.MediaGate), started with the enforcer
        self.emit: Callable[[Any], object] | None = None  # the pipeline's offer: dropped attempts as events
        self.droplog: Any = None
        self.log_reader: Any = None  # what reads the table's NFLOG group (agent.enforce.nflog.DropLog; tests swap it)
        self.copy: Any = None  # the copy guard (agent.enforce.copyguard.CopyGuard), started with the enforcer
        self.next: Callable[[Record], None] = lambda r: None
        self.active: dict[str, Enforcement] = {}
        self._lock = threading.RLock()
        self._n = 0
        self._applied = 0.0
        self._installed = False
        self.latencies: list[float] = []  # seconds from a block finding to the kernel holding it (bench)
        self.person: Callable[[int], str | None] = lambda uid: None  # the registry's person of a uid
        self._pending: dict[str, float] = {}  # id of a block the kernel made -> when it is lifted unconfirmed
        self._t0 = 0.0
        self._dirty = False

    # -- the finding sink ----------------------------------------------------
    def put(self, record: Record) -> None:
        """Act on a block finding, then pass the finding on (with its ``enforcement`` field)."""
        if record.get("type") != "finding" or record.get("action") != "block":
            self.next(record)
            return
        spec = record.pop("enforce", None) or {}
        if not self.cfg.active:
            record["enforcement"] = {**spec, "mode": "off", "result": "not_enforced"}
            self.next(record)
            return
        self._t0 = time.perf_counter()
        with self._lock:
            outcome = self._decide(record, spec)
        if outcome is not None:
            record["enforcement"] = outcome["summary"]
        self.next(record)
        for j in (outcome or {}).get("also", ()):
            self.record({**j, "_seq_of": record})
        if outcome is not None and outcome.get("journal"):
            self.record({**outcome["journal"], "_seq_of": record})

    def _decide(self, record: Record, spec: dict[str, Any]) -> dict[str, Any] | None:
        kind = spec.get("kind")
        ev = record.get("event") or {}
        now = self.clock()
        if kind in ("network", "isolate"):
            net = ev.get("net") or {}
            ip, zone = net.get("remote_ip"), net.get("remote_zone")
            if kind == "network" and self.cfg.isolate_critical and record.get("severity") == "critical":
                kind = "isolate"
            if kind == "isolate":
                return self._enforce(record, "isolate", "host", [str(ANY4), str(ANY6)], spec, now,
                                     {"remote_ip": ip, "remote_zone": zone})
            if not isinstance(ip, str) or not ip:
                return self._refuse(record, kind, "?", "the event names no remote address", now)
            if self.channel.is_management(ip):
                return self._refuse(record, kind, ip, f"{ip} is part of the management channel", now)
            if zone not in self.channel.forbidden:
                return self._refuse(record, kind, ip, f"{ip} is in zone {zone!r}, which enforcement does not forbid",
                                    now)
            if spec.get("scope") == "zone":
                also = self._confirm(ip, record, spec, now)  # the kernel's block of this address, if one waits
                out = self._decide_zone(record, spec, ip, str(zone), now)
                if also is not None:
                    out.setdefault("also", []).append(also["journal"])
                return out
            whole = self._zone_block(str(zone))
            if whole is not None:  # the whole zone is already shut (preventive, or an earlier zone block)
                return {"summary": self._summary(whole, "in_force")}
            host_net = str(ipaddress.ip_network(ip.split("%", 1)[0]))
            return self._enforce(record, "network", ip, [host_net], spec, now, {"remote_zone": zone})
        if kind == "media":
            media = ev.get("media") or {}
            dev = media.get("device")
            if not isinstance(dev, str) or not dev:
                return self._refuse(record, "media", "?", "the event names no device", now)
            return self._enforce(record, "media", dev, [], spec, now,
                                 {"mount": media.get("mount"), "serial": media.get("serial")})
        return self._refuse(record, str(kind or "network"), "?", f"no enforcement of kind {kind!r} here", now)

    def _zone_block(self, zone: str) -> Enforcement | None:
        """The block of the whole of ``zone``, if one is in force."""
        return next((e for e in self.active.values() if e.kind == "network" and e.target == f"zone:{zone}"), None)

    def _decide_zone(self, record: Record, spec: dict[str, Any], ip: str, zone: str, now: float) -> dict[str, Any]:
        whole = self._zone_block(zone)
        if whole is not None:
            return {"summary": self._summary(whole, "in_force")}
        nets = [str(n) for n in self.channel.nets_of_zone(zone)]
        return self._enforce(record, "network", f"zone:{zone}", nets, spec, now, {"remote_ip": ip, "remote_zone": zone})

    # -- blocks the kernel made ------------------------------------------------
    def first_packet(self, ip: str, uid: int | None, when: float) -> None:
        """The table blocked ``ip`` at a first packet (sent by ``uid``): adopt it until a block rule confirms it.

        Runs on the NFLOG reader's thread. The block is already in force; here it gets an id, the
        state file and the agent's lease. Its record waits for the finding (``_confirm``) or for
        ``CONFIRM_WITHIN`` to pass (``tick`` lifts it then, and journals both halves).
        """
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
        host_net = str(ipaddress.ip_network(addr))
        with self._lock:
            for e in self.active.values():
                if e.kind in ("network", "isolate") and e.mode == "enforce" and any(
                        addr in ipaddress.ip_network(n) for n in e.nets):
                    if e.target == ip and self.table is not None and self._installed:
                        # held already: the kernel added it again (a rebuild flushed it meanwhile): keep the TTL
                        left = (e.until - self.clock()) if e.until is not None else self.cfg.lease
                        with contextlib.suppress(NftError):
                            self.table.add("dest", ipaddress.ip_network(host_net), max(1.0, min(left, self.cfg.lease)))
                    return
            e = Enforcement(self._new_id(when), "network", ip, "enforce", "enforce.network.first_packet", "high",
                            when, when + self.cfg.ttl, self.person(uid) if uid is not None else None, None,
                            [host_net], {"remote_zone": self.channel.zone_of(ip), "uid": uid, "first_packet": True,
                                         "in_force_at": when})
            self.active[e.id] = e
            self._pending[e.id] = time.monotonic() + CONFIRM_WITHIN
            if self.table is not None and self._installed:
                # Held already; added again in case a rebuild of the sets flushed it before this was read.
                try:
                    self.table.add("dest", ipaddress.ip_network(host_net),
                                   max(1.0, min(self.cfg.ttl, self.cfg.lease / 2)))
                except NftError as exc:
                    _log.error("enforcement %s: %s", e.id, exc)
            self._save()

    def _confirm(self, ip: str, record: Record, spec: dict[str, Any], now: float) -> dict[str, Any] | None:
        """A block rule's finding about ``ip``: the kernel's block of it, if one waits, is confirmed and journaled
        (the rule's TTL from when the kernel blocked)."""
        e = next((x for x in self.active.values() if x.id in self._pending and x.target == ip), None)
        if e is None:
            return None
        del self._pending[e.id]
        e.rule = str(record.get("rule"))
        e.severity = str(record.get("severity"))
        e.operator = (record.get("accountable") or {}).get("operator") or e.operator
        e.finding_time = record.get("time")
        ttl = spec.get("ttl")
        if ttl and float(ttl) != self.cfg.ttl:
            e.until = e.since + float(ttl)
            if self.table is not None and self._installed:
                left = e.until - self.clock()
                try:
                    for n in e.nets:  # a timeout is not changed by adding the element again: replace it
                        self.table.delete("dest", ipaddress.ip_network(n))
                        if left > 0:
                            self.table.add("dest", ipaddress.ip_network(n), max(1.0, min(left, self.cfg.lease)))
                except NftError as exc:
                    _log.error("enforcement %s: the rule's TTL could not be set in the kernel: %s", e.id, exc)
        self.metrics.enforced("network", "enforced")
        self._save()
        in_force = e.detail.get("in_force_at")
        text = f"blocked network {ip} at its first packet, confirmed by rule {e.rule}" + (
            f" until {_iso(e.until)}" if e.until else "")
        _log.warning("enforcement %s: %s", e.id, text)
        detail = {**e.as_dict(), "result": "enforced", "by": "kernel",
                  "finding": {"rule": e.rule, "time": record.get("time")}, "lift_by": self.lift_by(e),
                  "message": text, "in_force_at": in_force}
        return {"summary": self._summary(e, "enforced"), "journal": self._lifecycle("enforce.action", detail, now)}

    def _unconfirmed(self, now: float) -> None:
        """Kernel blocks no block rule confirmed in time: journaled, then lifted."""
        with self._lock:
            due = [i for i, t in self._pending.items() if t <= time.monotonic()]
            for ident in due:
                del self._pending[ident]
        for ident in due:
            e = self.active.get(ident)
            if e is None:
                continue
            self.metrics.enforced("network", "unconfirmed")
            text = (f"the table blocked {e.target} at its first packet (uid {e.detail.get('uid')}); no block rule "
                    f"confirmed it within {CONFIRM_WITHIN:g} s: lifted")
            self.record(self._lifecycle("enforce.action", {**e.as_dict(), "result": "unconfirmed", "by": "kernel",
                                                           "lift_by": self.lift_by(e), "message": text,
                                                           "in_force_at": e.detail.get("in_force_at")}, now))
            self.lift(ident, "unconfirmed")

    # -- the media gate --------------------------------------------------------
    def gate_media(self, media: Any, why: str | None, people: list[str]) -> None:
        """A removable medium arrived: a registered one is admitted, an unregistered one made unwritable."""
        now = self.clock()
        who = ", ".join(people) if people else None
        ident = {"device": media.device, "serial": media.serial, "uuid": media.uuid, "vendor": media.vendor,
                 "product": media.product, "usb_serial": media.usb_serial, "logged_in": people}
        if media.registered:
            self.metrics.enforced("media", "allowed")
            text = (f"registered medium {media.serial} ({media.level or 'no level'}, held by {media.holder}) "
                    f"admitted on {media.device}")
            self.record(self._lifecycle("enforce.action", {
                "kind": "media", "target": media.device, "mode": self.cfg.mode, "result": "allowed",
                "rule": "enforce.media.registered", "level": str(media.level) if media.level is not None else None,
                "holder": media.holder, "operator": who, "detail": ident, "message": text}, now))
            return
        if why:
            ident["mismatch"] = why
        with self._lock:
            fake = {"rule": "enforce.media.unregistered", "severity": "high", "time": now,
                    "accountable": {"operator": who}}
            out = self._enforce(fake, "media", str(media.device), [], {}, now, ident, forever=True)
        if "journal" in out:
            self.record(out["journal"])

    def copy_denied(self, decision: Any, operator: str | None) -> None:
        """The copy guard denied (or, in dry-run, would have denied) an open: journal and count it."""
        from agent.enforce.copyguard import describe
        now = self.clock()
        result = "dryrun" if self.cfg.mode == "dryrun" else "denied"
        self.metrics.enforced("copy", result)
        verb = "would deny (dry-run)" if result == "dryrun" else "denied"
        text = (f"{verb} the open of {decision.path} by pid {decision.pid} ({operator or 'unknown'}): "
                f"{decision.why}; the medium {decision.stick.device if decision.stick else '?'} "
                f"{'is not registered' if decision.stick and not decision.stick.registered else 'is below that level'}")
        _log.warning("copy guard: %s", text)
        self.record(self._lifecycle("enforce.action", {
            "kind": "copy", "target": decision.path, "mode": self.cfg.mode, "result": result,
            "rule": "enforce.copy", "operator": operator, "detail": describe(decision), "message": text}, now))

    def media_removed(self, device: str) -> None:
        """A stick was pulled: its enforcement ends with it."""
        for e in [e for e in list(self.active.values()) if e.kind == "media" and e.target == device]:
            with self._lock:
                self.active.pop(e.id, None)
                self._save()
            self._journal_lift(e, "removed", None, "the medium was removed")

    # -- decisions -----------------------------------------------------------
    def _new_id(self, now: float) -> str:
        self._n += 1
        return f"E{int(now * 1000):x}-{self._n}"

    def lift_by(self, e: Enforcement) -> dict[str, Any]:
        """Who can lift an enforcement, and when it lifts by itself (written into its record)."""
        out: dict[str, Any] = {
            "command": f"dutywatch enforce lift {e.id}",
            "who": f"root on {self.host} (the host's administrator)",
            "custodian": self.custodian, "unit": self.unit,
            "expires": e.until,
        }
        if e.mode == "enforce" and e.kind in ("network", "isolate"):
            out["kernel_lease"] = self.cfg.lease  # the longest it outlives an agent that stopped without lifting
            out["table"] = f"inet {self.cfg.table}"
        return out

    def _enforce(self, record: Record, kind: str, target: str, nets: list[str], spec: dict[str, Any],
                 now: float, detail: dict[str, Any], forever: bool = False) -> dict[str, Any]:
        for e in self.active.values():
            if e.kind == kind and e.target == target:
                if e.id in self._pending:  # the kernel blocked it first: this finding confirms it
                    got = self._confirm(target, record, spec, now)
                    if got is not None:
                        return got
                return {"summary": self._summary(e, "in_force")}  # already blocked: the finding says so
        ttl = spec.get("ttl") or self.cfg.ttl
        until = None if forever or (kind == "media" and spec.get("ttl") is None) else now + float(ttl)
        operator = (record.get("accountable") or {}).get("operator")
        e = Enforcement(self._new_id(now), kind, target, self.cfg.mode, str(record.get("rule")),
                        str(record.get("severity")), now, until, operator, record.get("time"), nets, detail)
        result = "dryrun" if self.cfg.mode == "dryrun" else "enforced"
        error = None
        in_force = None
        if self.cfg.mode == "enforce":
            self.active[e.id] = e
            try:
                self._realise(e)
                in_force = self.clock()
                self.latencies.append(time.perf_counter() - self._t0)
            except (NftError, OSError) as exc:
                del self.active[e.id]
                result, error = "failed", str(exc)
                _log.error("enforcement %s on %s failed: %s", kind, target, exc)
        else:
            self.active[e.id] = e  # dry-run: tracked so repeats are one decision, nothing in the kernel
        self.metrics.enforced(kind, result)
        self._save()
        verb = {"enforced": "blocked", "dryrun": "would block (dry-run)", "failed": "could not block"}[result]
        text = f"{verb} {kind} {target} for rule {e.rule}" + (f" until {_iso(until)}" if until else "")
        if error:
            text += f": {error}"
        _log.warning("enforcement %s: %s", e.id, text)
        detail_out = {**e.as_dict(), "result": result, "finding": {"rule": e.rule, "time": record.get("time")},
                      "lift_by": self.lift_by(e), "message": text}
        if error:
            detail_out["error"] = error
        if in_force is not None:
            detail_out["in_force_at"] = in_force  # when the kernel held it: the offence-to-block delay is auditable
        summary = self._summary(e, result)
        if result == "failed":
            summary["error"] = error
        return {"summary": summary, "journal": self._lifecycle("enforce.action", detail_out, now)}

    def _refuse(self, record: Record, kind: str, target: str, why: str, now: float) -> dict[str, Any]:
        self.metrics.enforced(kind, "refused")
        text = f"not enforced: {why}"
        _log.warning("block rule %s: %s", record.get("rule"), text)
        summary = {"kind": kind, "target": target, "mode": self.cfg.mode, "result": "refused", "why": why}
        detail = {**summary, "rule": record.get("rule"), "finding": {"rule": record.get("rule"),
                                                                      "time": record.get("time")},
                  "message": text}
        return {"summary": summary, "journal": self._lifecycle("enforce.action", detail, now)}

    @staticmethod
    def _summary(e: Enforcement, result: str) -> dict[str, Any]:
        return {"id": e.id, "kind": e.kind, "target": e.target, "mode": e.mode, "result": result, "until": e.until}

    def _lifecycle(self, kind: str, detail: dict[str, Any], now: float) -> Record:
        return {"type": "lifecycle", "time": now, "host": self.host, "kind": kind, "detail": detail}

    # -- the kernel ----------------------------------------------------------
    def _realise(self, e: Enforcement) -> None:
        if e.kind == "network" and not e.target.startswith("zone:") and self.table is not None and self._installed:
            # One more destination: one element added, nothing rebuilt (a rebuild renews the lease later).
            left = (e.until - self.clock()) if e.until is not None else self.cfg.lease
            for n in e.nets:
                self.table.add("dest", ipaddress.ip_network(n), max(1.0, min(left, self.cfg.lease)))
        elif e.kind in ("network", "isolate"):
            self._apply()
        elif e.kind == "media" and self.media is not None:
            e.detail.update(self.media.protect(e.target, e.detail))

    def _apply(self, keep: bool = False) -> None:
        """Make the table's sets hold every network enforcement in force (``keep``: full TTL, past the lease)."""
        if self.table is None:
            return
        if not self._installed:
            self.table.install(self.channel.layout)
            self._installed = True
        now = self.clock()
        elements = Elements()
        for e in self.active.values():
            if e.mode != "enforce" or e.kind not in ("network", "isolate"):
                continue
            left = (e.until - now) if e.until is not None else self.cfg.lease
            if not keep:
                left = min(left, self.cfg.lease)
            for n in e.nets:
                net = ipaddress.ip_network(n)
                name = _NET_SET[e.kind]
                if e.kind == "network" and e.target.startswith("zone:"):
                    name = "wide" if net in (ANY4, ANY6) else "zone"
                elements.add(name, net, max(left, 1.0))
        if self.channel.layout.first_packet and not keep:
            # Half a lease, renewed every third: with no agent to renew it, the kernel stops blocking new
            # destinations within half a lease, and what it blocked last lapses within the other half.
            for net in self.channel.forbidden_nets():
                elements.add("forbid", net, self.cfg.lease / 2)
        self.table.apply(elements)
        self._applied = now

    # -- lifting -------------------------------------------------------------
    def lift(self, ident: str, how: str, by: dict[str, Any] | None = None, reason: str = "") -> bool:
        """Lift one enforcement and journal it; False when no such one is in force."""
        with self._lock:
            e = self.active.pop(ident, None)
            if e is None:
                return False
            self._pending.pop(ident, None)
            self._release(e)
            self._flush()
        self._journal_lift(e, how, by, reason)
        return True

    def _release(self, e: Enforcement) -> None:
        if e.mode != "enforce":
            return
        try:
            if e.kind == "network" and not e.target.startswith("zone:") and self.table is not None \
                    and self._installed:
                for n in e.nets:
                    with contextlib.suppress(NftError):  # already gone at its kernel timeout
                        self.table.delete("dest", ipaddress.ip_network(n))
            elif e.kind in ("network", "isolate"):
                self._apply()
            elif e.kind == "media" and self.media is not None:
                self.media.release(e.target, e.detail)
        except (NftError, OSError) as exc:
            _log.error("lifting %s: %s (the kernel drops it at its timeout)", e.id, exc)

    def _journal_lift(self, e: Enforcement, how: str, by: dict[str, Any] | None, reason: str) -> None:
        now = self.clock()
        result = "expired" if how == "ttl" else "lifted"
        self.metrics.enforced(e.kind, result)
        text = {"ttl": "its time ran out", "command": "lifted by command", "stop": "the agent stopped",
                "restart": "the agent restarted without persist", "keep": "kept past the agent's stop",
                "unconfirmed": "no block rule confirmed the kernel's block"}.get(how, how)
        detail = {"id": e.id, "kind": e.kind, "target": e.target, "mode": e.mode, "rule": e.rule, "how": how,
                  "result": result if how != "keep" else "kept", "since": e.since, "until": e.until,
                  "message": f"{e.kind} {e.target} ({e.id}): {text}" + (f": {reason}" if reason else "")}
        if by:
            detail["by"] = by
        if reason:
            detail["reason"] = reason
        _log.warning("enforcement %s lifted: %s", e.id, detail["message"])
        self.record(self._lifecycle("enforce.lift", detail, now))

    # -- the agent's lifecycle -------------------------------------------------
    def start(self) -> None:
        """Lift or restore what a previous run left, set up the table, put preventive blocks in force."""
        prev = load(self.state_dir)
        now = self.clock()
        restored: list[Enforcement] = []
        if prev is not None and prev.enforcements:
            for e in prev.enforcements:
                if self.cfg.persist and (e.until is None or e.until > now) and e.mode == self.cfg.mode \
                        and e.detail.get("preventive") is None:
                    restored.append(e)
                else:
                    if e.mode == "enforce" and e.kind == "media" and self.media is not None:
                        try:
                            self.media.release(e.target, e.detail)
                        except OSError as exc:
                            _log.error("releasing %s: %s", e.id, exc)
                    self._journal_lift(e, "restart" if e.until is None or e.until > now else "ttl", None,
                                       f"left by agent pid {prev.pid}")
        if prev is not None and prev.table != self.cfg.table and not alive(prev.pid):
            with contextlib.suppress(NftError):  # a table of an earlier config's name is this agent's too
                NftTable(prev.table).remove()
        with self._lock:
            for e in restored:
                e.id = e.id if e.id not in self.active else self._new_id(now)
                self.active[e.id] = e
                self.record(self._lifecycle("enforce.action", {**e.as_dict(), "result": "restored",
                                                               "lift_by": self.lift_by(e),
                                                               "message": f"restored {e.kind} {e.target}"}, now))
            preventive = self.cfg.network_mode == "preventive" and self.emit is not None
            by_kernel = self.cfg.network_mode == "reactive" and self.cfg.reactive_by == "kernel"
            if self.cfg.mode == "enforce" and self.table is not None and (preventive or by_kernel):
                from dataclasses import replace

                from agent.enforce.nflog import DropLog
                group = 19000 + sum(self.cfg.table.encode()) % 1000
                try:
                    # Every new attempt the table drops is an event too (so a finding with its operator): with
                    # the kernel's own blocks the dropped packets never reach the network collector.
                    self.droplog = (self.log_reader or DropLog)(group, self.emit, self.clock,
                                                                first=self.first_packet if by_kernel else None)
                    self.droplog.start()
                except OSError as exc:
                    # Without the log the agent could not adopt (nor lift) what the kernel blocks: the agent
                    # blocks after the rule instead.
                    _log.error("the table's log cannot be read (NFLOG group %d): %s", group, exc)
                    self.droplog = None
                if self.droplog is not None:
                    first = max(1, int(min(self.cfg.ttl, self.cfg.lease / 2))) if by_kernel else None
                    self.channel = replace(self.channel, layout=replace(
                        self.channel.layout, log_group=group, log_drops=self.emit is not None, first_packet=first))
            if self.cfg.mode == "enforce" and self.table is not None:
                if not restored:
                    self.table.remove()
                self._installed = False
                try:
                    self._apply()
                except NftError as exc:
                    _log.error("enforcement table %s could not be set up: %s", self.cfg.table, exc)
                    self.metrics.enforced("network", "failed")
            if self.cfg.network_mode == "preventive":
                for zone in self.channel.forbidden:
                    nets = [str(n) for n in self.channel.nets_of_zone(zone)]
                    fake = {"rule": "enforce.network.preventive", "severity": "high", "time": now,
                            "accountable": {}}
                    out = self._enforce(fake, "network", f"zone:{zone}", nets, {}, now, {"preventive": True},
                                        forever=True)
                    if "journal" in out:
                        self.record(out["journal"])
            self._flush()
        if self.copy is not None:
            try:
                self.copy.start()
            except OSError as exc:
                _log.error("the copy guard cannot take permission events: %s", exc)
                self.metrics.enforced("copy", "failed")
        if self.gate is not None:
            try:
                self.gate.start()
            except OSError as exc:
                _log.error("the media gate cannot listen for new block devices: %s", exc)
                self.metrics.enforced("media", "failed")

    def tick(self) -> None:
        """Expire TTLs, take lift requests, renew the kernel lease, write the state (call every second or so)."""
        now = self.clock()
        if self._pending:
            self._unconfirmed(now)
        if self._dirty:
            with self._lock:
                self._flush()
        for req in take_requests(self.state_dir):
            ident = req["id"]
            if ident == "all":
                for e in list(self.active.values()):
                    self.lift(e.id, "command", req.get("by"), str(req.get("reason") or ""))
            elif not self.lift(ident, "command", req.get("by"), str(req.get("reason") or "")):
                _log.warning("lift request for %s: no such enforcement in force", ident)
        for e in [e for e in list(self.active.values()) if e.until is not None and e.until <= now]:
            self.lift(e.id, "ttl")
        with self._lock:
            # Every element's kernel timeout is at most the lease: rebuild every third of it while a block
            # must outlast that (an agent that stops renewing leaves nothing for longer than the lease).
            # The kernel's own reactive rule is leased too (its forbid sets): renewed while the agent runs.
            if self._installed and now - self._applied >= self.cfg.lease / 3 and (
                    self.channel.layout.first_packet or any(
                        e.mode == "enforce" and e.kind in ("network", "isolate")
                        and (e.until is None or e.until - now > self.cfg.lease / 3) for e in self.active.values())):
                try:
                    self._apply()
                except NftError as exc:
                    _log.error("renewing the enforcement lease: %s", exc)

    def swap_guards(self, gate: Any, copy: Any) -> None:
        """Replace the media gate and the copy guard (the registry changed); running ones are restarted."""
        if self.gate is not None and self.gate.running:
            self.gate.stop()
        if self.copy is not None and self.copy.fd >= 0:
            self.copy.stop()
        self.gate, self.copy = gate, copy
        for what, guard in (("copy guard", copy), ("media gate", gate)):
            if guard is not None:
                try:
                    guard.start()
                except OSError as exc:
                    _log.error("the %s cannot start: %s", what, exc)
                    self.metrics.enforced("copy" if guard is copy else "media", "failed")

    def shutdown(self) -> None:
        """The stop policy: lift everything (``on_stop: lift``) or leave it to run out (``keep``)."""
        if self.gate is not None and self.gate.running:
            self.gate.stop()
        if self.copy is not None and self.copy.fd >= 0:
            self.copy.stop()
        if self.droplog is not None:
            self.droplog.stop()
            self.droplog = None
        with self._lock:
            items = list(self.active.values())
            if self.cfg.on_stop == "lift":
                self.active.clear()
                for e in items:
                    if e.mode == "enforce" and e.kind == "media" and self.media is not None:
                        try:
                            self.media.release(e.target, e.detail)
                        except OSError as exc:
                            _log.error("releasing %s: %s", e.id, exc)
                if self.table is not None and self.cfg.mode == "enforce":
                    try:
                        self.table.remove()
                    except NftError as exc:
                        _log.error("removing table %s: %s", self.cfg.table, exc)
                for e in items:
                    self._journal_lift(e, "stop", None, "")
            else:
                try:
                    self._apply(keep=True)
                except NftError as exc:
                    _log.error("keeping blocks past the stop: %s", exc)
                for e in items:
                    self._journal_lift(e, "keep", None, "in force until it expires, or dutywatch enforce lift "
                                                        f"{e.id}")
            self._flush()

    def _save(self) -> None:
        """The state file is written by the next tick (a decision must not wait on the disk), which ``wake`` brings
        forward, so ``dutywatch enforce list`` knows a block even if the agent is killed right after it."""
        self._dirty = True
        if self.wake is not None:
            self.wake()

    def _flush(self) -> None:
        self._dirty = False
        if not self.cfg.active and not self.active and not (self.state_dir / "enforce.json").exists():
            return  # enforcement off and nothing left by an earlier run: no state file at all
        try:
            save(self.state_dir, Saved(os.getpid(), self.cfg.table, self.clock(), list(self.active.values())))
        except OSError as exc:
            _log.error("cannot save the enforcement state: %s", exc)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
