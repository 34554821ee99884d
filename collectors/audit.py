"""The kernel audit collector: who did what, from the kernel's own record of it.

Speaks NETLINK_AUDIT directly. Three modes, shown as
``collector_up{collector="audit",mode=...}``:

- ``multicast``: an audit daemon (auditd) is registered. The agent reads the
  read-only multicast group (CAP_AUDIT_READ) and never takes auditd's place;
  its own keyed rules are added beside auditd's and removed at stop.
- ``daemon``: no audit daemon. The agent enables auditing and registers as
  the daemon, so records come to it and are not written to the kernel log;
  at stop it removes its rules and puts back the enabled flag, backlog limit
  and daemon pid it found. When auditd starts later (its exec is seen in the
  agent's own records, or the kernel asks the agent to make room) the agent
  joins the multicast group first and then gives the role up, so no record
  falls between the two (the old socket is read to its end); a record seen on
  both counts once. An audit daemon refused because it asked first (the
  kernel's AUDIT_REPLACE) is restarted by its service: the agent keeps out of
  the role ``_YIELD_GRACE`` seconds after giving it up, so the restart finds it free.
- ``off``: no capability, or the kernel has no audit support: the other
  collectors carry on as before (the process collector reports execs).

With the audit configuration locked (``auditctl -e 2``) no rule can be added:
the agent reads what the kernel's existing rules give and says so.
The kernel's ``lost`` counter and socket overflows are counted in
``health.drops`` (``kernel_lost``, ``socket_overflow``).

One thread (the supervisor's): it blocks in select on the audit socket, the stop
descriptor and the resync event's descriptor until the next status check (every
``_STATUS_EVERY``), rules check or an unfinished record's close is due. It stays a
thread of its own: the kernel's backlog fills while nobody reads, so reading must never
wait behind another source's work.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from agent.events import Event, Parent, Process
from collectors.audit_assemble import Assembler, clean_exe
from collectors.audit_netlink import (
    AUDIT_REPLACE,
    AUDIT_STATUS_BACKLOG_LIMIT,
    AUDIT_STATUS_ENABLED,
    AUDIT_STATUS_PID,
    AuditSocket,
    AuditStatus,
    Message,
)
from collectors.audit_records import parse_record, text
from collectors.audit_rules import Rule, build_rules, canonical, is_own, syscall_name
from collectors.base import (
    Availability,
    CollectorError,
    Emit,
    Health,
    Sources,
    WakeEvent,
    section,
    stop_fd,
    stop_timeout,
)
from collectors.netjoin import DnsJoin, is_dns_send
from collectors.procfs import ProcReader, parse_unit

MODES = ("auto", "multicast", "daemon")
_STATUS_EVERY = 2.0
_RULES_EVERY = 10.0
_BACKLOG = 8192  # auditd's own default (-b 8192): an exec storm must not overflow the kernel's queue
_DAEMONS = frozenset({"auditd", "go-audit", "auditbeat", "laurel"})
_DAEMON_EXE = re.compile(b'/(?:' + b"|".join(re.escape(d.encode()) for d in sorted(_DAEMONS)) + b')"')
# After giving the role up, the agent does not take it back this long while nobody holds it: an audit daemon
# refused once (it asked while the agent still held the role) is started again by its service manager
# (auditd.service: Restart=on-failure, RestartSec 100 ms) and must find the role free.
_YIELD_GRACE = 10.0


class AuditCollector:
    """Process, connection, classified-file, mount, login and account events from the kernel audit trail.

    Config (``collectors.audit``): ``enabled``, ``mode`` (auto | multicast |
    daemon: auto takes the daemon role only when none is registered),
    ``connect``, ``mounts``, ``guard`` (signals and ptrace aimed at the
    agent), ``modules`` (module loading): which rule families to add.
    ``asset_paths`` are the registry's asset path prefixes, watched for
    read, write and attribute change.
    """

    name = "audit"

    def __init__(self, config: Mapping[str, Any] | None = None, sources: Sources | None = None, *,
                 asset_paths: Iterable[str] = (), own_paths: Iterable[str] = (), rcvbuf: int = 32 << 20,
                 logger: logging.Logger | None = None) -> None:
        self._sources = sources or Sources()
        self._mode = str(section(config, "mode", "auto"))
        if self._mode not in MODES:
            raise CollectorError(f"collectors.audit.mode must be one of {', '.join(MODES)}, not {self._mode!r}")
        self._enabled = bool(section(config, "enabled", True))
        self._families = {k: bool(section(config, k, True)) for k in ("connect", "mounts", "guard", "modules")}
        self._rcvbuf = rcvbuf
        self._log = logger or logging.getLogger("dutywatch.collectors.audit")
        self.health = Health()
        self.pid = os.getpid()
        self.asset_paths = tuple(asset_paths)
        self.own_paths = tuple(own_paths)  # the agent's own files: watched for changes only
        self._reader = ProcReader(self._sources.proc_root, self._sources.clock)
        self._covers: frozenset[str] = frozenset()
        self._watched: tuple[str, ...] = ()  # asset prefixes whose watches are in force
        self._exact: frozenset[str] = frozenset()
        self._mounts: dict[str, tuple[Process, Parent, float]] = {}  # mount point -> who, when (monotonic)
        self._resync = WakeEvent()  # its descriptor wakes the reading loop
        # A send to port 53 waits here for the sniffer's name of it (collectors.netjoin): one query, one event.
        self.dns_join = DnsJoin()
        # Module loads and removals reported here, until the inventory's next diff would report them again.
        self._modules: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._modules_lock = threading.Lock()
        self.rules_installed: list[bytes] = []

    # -- what the other collectors ask ----------------------------------------
    def covers(self, kind: str) -> bool:
        """Whether this collector is up and its own rules report ``kind`` (``process.exec``, ``net.connect``...)."""
        return self.health.up and kind in self._covers

    def covers_path(self, path: str | None) -> bool:
        """Whether a file operation on ``path`` is reported here (an asset path under this collector's watch)."""
        if path is None or not self._watched or not self.covers("file"):
            return False
        return path in self._exact or path.startswith(self._watched)

    def mounted_by(self, mount: str | None, wait: float = 0.5) -> tuple[Process, Parent] | None:
        """Who mounted (or unmounted) ``mount`` in the last minute, by the kernel's record; waits up to ``wait`` s.

        The media collector tells what medium a mount is; this tells who made it (the two are one event).
        """
        if mount is None or not self.covers("media.mount"):
            return None
        end = time.monotonic() + wait
        while True:
            hit = self._mounts.get(posixpath.normpath(mount))
            if hit is not None and time.monotonic() - hit[2] < 60.0:
                return hit[0], hit[1]
            if time.monotonic() >= end:
                return None
            time.sleep(0.02)

    def reported_module(self, event: Event) -> bool:
        """Whether this ``inventory.module`` change (of the inventory's diff) was reported here already.

        A load is one operation: reported here when the kernel did it, with who did it; the inventory's
        later diff of the module list finds the same change and leaves it out (each report answers once).
        """
        inv = event.inventory
        if event.kind != "inventory.module" or inv.name is None or inv.change is None:
            return False
        with self._modules_lock:
            try:
                del self._modules[(inv.name, inv.change)]
            except KeyError:
                return False
            return True

    def _module_reported(self, event: Event) -> None:
        inv = event.inventory
        if inv.name is None or inv.change not in ("added", "removed"):
            return
        with self._modules_lock:
            # A load then a removal (or the reverse) leaves the list as it was: the diff sees neither.
            undo = (inv.name, "removed" if inv.change == "added" else "added")
            if undo in self._modules:
                del self._modules[undo]
                return
            self._modules[(inv.name, inv.change)] = None
            while len(self._modules) > 4096:
                self._modules.popitem(last=False)

    def set_asset_paths(self, paths: Iterable[str]) -> None:
        """New registry asset paths (after a reload): the watches are rebuilt on the collector's thread."""
        self.asset_paths = tuple(paths)
        self._resync.set()

    # -- protocol ----------------------------------------------------------------
    def available(self) -> Availability:
        """daemon or multicast when the kernel lets this process in, else off with the reason."""
        if not self._enabled:
            return Availability(None, "disabled in config")
        try:
            with AuditSocket(rcvbuf=1 << 16) as ctl:
                st = ctl.status()
        except (CollectorError, OSError) as exc:
            reason = str(exc) if isinstance(exc, CollectorError) else \
                f"kernel audit status: {os.strerror(exc.errno or 0)}"
            try:
                AuditSocket(rcvbuf=1 << 16, multicast=True).open().close()
                return Availability("multicast", f"{reason}; reading the multicast group without own rules")
            except CollectorError as exc2:
                return Availability("off", f"{reason}; {exc2}; the other collectors report alone")
        if st.pid and self._mode != "daemon":
            return Availability("multicast")
        if st.pid and self._mode == "daemon":
            return Availability(None, f"collectors.audit.mode is daemon but pid {st.pid} holds the role")
        if self._mode == "multicast":
            return Availability("multicast", "no audit daemon registered; mode multicast asked for")
        return Availability("daemon")

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Read and report audit records until ``stop`` is set; leave the kernel as it was found."""
        if not self._enabled:
            raise CollectorError("audit collector cannot run: disabled in config")
        avail = self.available()
        if avail.mode == "off" or avail.mode is None:
            self.health.mode = "off"
            self.health.up = False
            self._log.warning("audit collector off: %s", avail.reason)
            stop.wait()
            return
        _Session(self, emit, stop).run()

    # -- used by the session --------------------------------------------------------
    def _parent(self, ppid: int) -> Parent | None:
        found = self._reader.cached(ppid) or self._reader.identity(ppid)
        if found is None:
            return None
        p = found[0]
        return Parent(pid=p.pid, name=p.name, exe=p.exe, cmdline=p.cmdline)

    def _parent_unit(self, ppid: int) -> tuple[bool, str | None]:
        """The unit of ``ppid`` as read with its identity (for the parent group), without reading /proc again."""
        found = self._reader.cached(ppid)
        if found is None or found[0].loginuid is not None:
            return False, None  # the unit is read only for a process with no login identity
        return True, found[0].unit

    def _unit(self, pid: int, exe: str | None) -> tuple[bool, str | None]:
        """Whether ``pid`` still runs ``exe`` (else it is gone or reused) and, if so, its systemd unit."""
        base = f"{self._sources.proc_root}/{pid}"
        try:
            # Two calls for a live process; one for one gone (or a zombie, which has no exe).
            if exe is None or clean_exe(os.readlink(f"{base}/exe")) != exe:
                return False, None
            fd = os.open(f"{base}/cgroup", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False, None
        try:
            return True, parse_unit(os.read(fd, 4096))
        except OSError:
            return False, None
        finally:
            os.close(fd)

    def _rules(self) -> list[Rule]:
        f = self._families
        return build_rules(self.asset_paths, self.pid, changes_only=self.own_paths, net=f["connect"],
                           mounts=f["mounts"], guard=f["guard"],
                           modules=f["modules"])


class _Session:
    """One run: the sockets, the state found at start (to restore), the mode now."""

    def __init__(self, owner: AuditCollector, emit: Emit, stop: threading.Event) -> None:
        self.c = owner
        self.emit = emit
        self.stop = stop
        self.log = owner._log
        self.ctl: AuditSocket | None = None
        self.reader: AuditSocket | None = None
        self.found: AuditStatus | None = None
        self.restore: dict[int, int] = {}  # status mask bit -> value to put back
        self.mode = "off"
        self.yielded_at: float | None = None  # monotonic time the daemon role was last given up
        self.lost_seen: int | None = None
        self.asm = Assembler(syscall_names=syscall_name, parents=owner._parent, units=owner._unit,
                             parent_units=owner._parent_unit,
                             asset_prefixes=owner.asset_paths, agent_pid=owner.pid)

    # -- lifecycle ---------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._start()
            self.c.health.mode = self.mode
            self.c.health.up = True
            self._loop()
        finally:
            self.c.health.up = False
            self._finish()

    def _start(self) -> None:
        try:
            self.ctl = AuditSocket(rcvbuf=1 << 20).open()
            self.found = self.ctl.status()
        except (CollectorError, OSError) as exc:
            self.log.warning("audit: no control of the kernel audit configuration (%s): multicast only", exc)
            if self.ctl is not None:
                self.ctl.close()
            self.ctl = None
            self._join_multicast()
            return
        if (self.found.pid and self.found.pid != self.c.pid) or self.c._mode == "multicast":
            self._join_multicast()
        else:
            self._become_daemon()
        self._install_rules()

    def _finish(self) -> None:
        other = False
        if self.ctl is not None:
            self._remove_rules()
            try:
                pid = self.ctl.status().pid
            except OSError:
                pid = 0
            # Settings changed by the agent go back as found, unless an audit daemon now owns them.
            other = pid not in (0, self.c.pid)
            if not other:
                self._restore_status(before_unregister=True)
            if self.mode == "daemon":
                self._drain(0.05)
        if self.reader is not None and self.mode == "daemon":
            try:
                self.reader.set_status(AUDIT_STATUS_PID, pid=0)
            except OSError as exc:
                self.log.warning("audit: could not give the daemon role back: %s", exc)
        if self.ctl is not None and not other:
            self._restore_status(before_unregister=False)
        for s in (self.reader, self.ctl):
            if s is not None:
                s.close()
        self.reader = self.ctl = None
        self.c.rules_installed = []
        self.c._covers = frozenset()
        self.log.info("audit collector stopped; kernel audit settings restored")

    # -- modes -------------------------------------------------------------------------
    def _join_multicast(self) -> None:
        sock = AuditSocket(rcvbuf=self.c._rcvbuf, multicast=True).open()
        old, self.reader = self.reader, sock
        self.mode = "multicast"
        self.c.health.mode = "multicast"
        self.log.info("audit collector: multicast mode (an audit daemon is registered)")
        if old is not None:
            # Records already queued on the old (multicast) socket are still read: nothing falls in between.
            self._drain_socket(old, within=0.2)
            old.close()

    def _become_daemon(self) -> None:
        assert self.ctl is not None and self.found is not None
        reader = AuditSocket(rcvbuf=self.c._rcvbuf).open()
        try:
            reader.set_status(AUDIT_STATUS_PID, pid=self.c.pid)
        except OSError as exc:
            reader.close()
            if exc.errno == errno.EEXIST:
                self._join_multicast()
                return
            raise CollectorError(f"audit: cannot take the audit daemon role: {os.strerror(exc.errno or 0)}") from exc
        self.reader = reader
        self.mode = "daemon"
        st = self.ctl.status()
        if st.enabled == 0:
            self.ctl.set_status(AUDIT_STATUS_ENABLED, enabled=1)
            self.restore.setdefault(AUDIT_STATUS_ENABLED, 0)
        if st.enabled != 2 and st.backlog_limit < _BACKLOG:
            try:
                self.ctl.set_status(AUDIT_STATUS_BACKLOG_LIMIT, backlog_limit=_BACKLOG)
                self.restore.setdefault(AUDIT_STATUS_BACKLOG_LIMIT, st.backlog_limit)
            except OSError as exc:
                self.log.warning("audit: backlog limit left at %d: %s", st.backlog_limit, exc)
        self.log.info("audit collector: daemon mode (no audit daemon registered; records do not go to the kernel log)")

    def _daemon_exec(self, payload: bytes) -> None:
        """A SYSCALL record of an exec whose exe is an audit daemon's: hand the role over unless it is the agent."""
        rec = parse_record(1300, payload)
        if rec is None or rec.fields.get("success") == "no":
            return
        exe = text(rec.fields.get("exe")) or ""
        pid = rec.fields.get("pid")
        if posixpath.basename(exe) in _DAEMONS and pid != str(self.c.pid):
            self._step_aside(f"audit daemon {exe} (pid {pid}) started")

    def _step_aside(self, why: str) -> None:
        """Hand the daemon role to a starting audit daemon: multicast first, then unregister."""
        if self.mode != "daemon" or self.reader is None:
            return
        self.log.warning("audit: %s; giving the daemon role up and reading the multicast group", why)
        unicast = self.reader
        mcast = AuditSocket(rcvbuf=self.c._rcvbuf, multicast=True).open()
        try:
            unicast.set_status(AUDIT_STATUS_PID, pid=0)
        except OSError as exc:
            self.log.warning("audit: unregistering failed: %s", exc)
        self.reader = mcast
        self.mode = "multicast"
        self.c.health.mode = "multicast"
        self.yielded_at = time.monotonic()
        # Every record the kernel handles from now on goes to the multicast group too (it sends there first);
        # what it gave the old socket before is read to the end, however much it is.
        self._drain_socket(unicast, within=10.0)  # ends when empty; the bound only if unregistering failed
        unicast.close()

    def _drain_socket(self, sock: AuditSocket, within: float | None = None) -> None:
        """Read ``sock`` until it is empty, at most ``within`` seconds: a unicast socket given up gets nothing
        new, so it ends empty; the multicast group goes on getting records, so it ends by the bound."""
        end = None if within is None else time.monotonic() + within
        while end is None or time.monotonic() < end:
            msgs, overflows = sock.receive(0.0, 1024)
            if overflows:
                self.c.health.drop("socket_overflow", overflows)
            if not msgs:
                return
            self._take(msgs)

    def _restore_status(self, before_unregister: bool) -> None:
        assert self.ctl is not None
        for bit, value in list(self.restore.items()):
            if (bit == AUDIT_STATUS_ENABLED) != before_unregister:
                continue
            try:
                if bit == AUDIT_STATUS_ENABLED:
                    self.ctl.set_status(bit, enabled=value)
                elif bit == AUDIT_STATUS_BACKLOG_LIMIT:
                    self.ctl.set_status(bit, backlog_limit=value)
                del self.restore[bit]
            except OSError as exc:
                self.log.warning("audit: could not restore setting %#x: %s", bit, exc)

    # -- rules --------------------------------------------------------------------------
    def _install_rules(self) -> None:
        if self.ctl is None:
            self.c._covers = frozenset()
            return
        self._remove_rules(stale_only=True)
        added: list[bytes] = []
        failed: list[str] = []
        covers: set[str] = set()
        for rule in self.c._rules():
            data = rule.pack()
            try:
                self.ctl.add_rule(data)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    failed.append(f"{rule.label or rule.key}: {os.strerror(exc.errno or 0)}")
                    continue
            added.append(data)
            covers.add(_COVERS.get(rule.key.removeprefix("dutywatch-"), ""))
        self.c.rules_installed = added
        watched = [r.label for r in self.c._rules() if r.key.endswith("-file") and r.pack() in added]
        self.c._exact = frozenset(watched)
        self.c._watched = tuple(w.rstrip("/") + "/" for w in watched)
        self.c._covers = frozenset(covers - {""})
        if failed:
            self.log.warning("audit: %d rule(s) not added (%s)", len(failed), "; ".join(failed[:5]))
        self.log.info("audit: %d own rule(s) in force", len(added))

    def _remove_rules(self, stale_only: bool = False) -> None:
        """Delete the agent's rules (all of them at stop; at start only those of a run that is gone)."""
        if self.ctl is None:
            return
        try:
            listed = self.ctl.list_rules()
        except OSError:
            listed = []
        for data in listed:
            if not is_own(data):
                continue
            if stale_only and not _stale(data, self.c.pid):
                continue
            if not stale_only and not _mine(data, self.c.pid):
                continue
            try:
                self.ctl.delete_rule(data)
            except OSError as exc:
                self.log.warning("audit: could not delete a rule: %s", exc)

    def _check_rules(self) -> None:
        """Put the rules back if someone deleted them (``auditctl -D``, an auditd reload)."""
        if self.ctl is None or not self.c.rules_installed:
            return
        try:
            listed = {canonical(r) for r in self.ctl.list_rules()}
        except OSError:
            return
        missing = [r for r in self.c.rules_installed if canonical(r) not in listed]
        if missing:
            self.log.warning("audit: %d own rule(s) were removed from the kernel; adding them again", len(missing))
            self._install_rules()

    # -- reading ------------------------------------------------------------------------
    def _loop(self) -> None:
        next_status = next_rules = 0.0
        wake = tuple(fd for fd in (stop_fd(self.stop), self.c._resync.fileno()) if fd is not None)
        while not self.stop.is_set():
            assert self.reader is not None
            # Until records come, stop or a resync is asked, or the next status or rules check or an
            # unfinished record's close is due: a quiet host wakes this thread every _STATUS_EVERY at most.
            due = min(next_status, next_rules, self.asm.next_due() or next_rules,
                      self.c.dns_join.audit_due() or next_rules)
            msgs, overflows = self.reader.receive(stop_timeout(self.stop, due - time.monotonic()), 256, wake)
            if overflows:
                self.c.health.drop("socket_overflow", overflows)
            self._take(msgs)
            now = time.monotonic()
            self._send(self.asm.flush(now))
            for ev in self.c.dns_join.audit_expired():
                self._out(ev)
            if now >= next_status:
                next_status = now + _STATUS_EVERY
                self._check_status()
            if self._resync_due() or now >= next_rules:
                next_rules = now + _RULES_EVERY
                self._check_rules()
        self._drain(0.1)

    def _resync_due(self) -> bool:
        if not self.c._resync.is_set():
            return False
        self.c._resync.clear()
        self.asm.asset_prefixes = self.c.asset_paths
        if self.ctl is not None:
            # The new set first (unchanged rules are there already), then what is no longer wanted:
            # no moment without the exec and connect rules.
            self._install_rules()
            wanted = {canonical(r) for r in self.c.rules_installed}
            try:
                listed = self.ctl.list_rules()
            except OSError:
                listed = []
            for data in listed:
                if is_own(data) and _mine(data, self.c.pid) and canonical(data) not in wanted:
                    try:
                        self.ctl.delete_rule(data)
                    except OSError as exc:
                        self.log.warning("audit: could not delete a rule: %s", exc)
        return False

    def _drain(self, quiet: float, within: float = 2.0) -> None:
        """Read what is queued at stop until ``quiet`` seconds pass without a record, at most ``within`` seconds:
        on a busy host (another agent's or auditd's rules in force) records never stop coming, and a stop that
        never ended would leave the rules and the daemon role behind when the process exits."""
        if self.reader is None:
            return
        end = time.monotonic() + within
        while time.monotonic() < end:
            msgs, _ = self.reader.receive(quiet, 1024)
            if not msgs:
                break
            self._take(msgs)
        self._send(self.asm.flush(0.0, everything=True))
        for ev in self.c.dns_join.audit_expired(everything=True):
            self._out(ev)

    def _take(self, msgs: list[Message]) -> None:
        now = time.monotonic()
        for m in msgs:
            if m.type == AUDIT_REPLACE:
                asker = int.from_bytes(m.payload[:4], sys.byteorder) if len(m.payload) >= 4 else 0
                self._step_aside(f"an audit daemon (pid {asker}) asked for the role and was refused while the agent "
                                 "held it; it must be started again (its service manager restarts it on failure)")
                continue
            if m.type == 1300 and self.mode == "daemon" and m.payload.endswith(b'key="dutywatch-exec"') \
                    and _DAEMON_EXE.search(m.payload) is not None:
                # An audit daemon's exec: make room now, before it asks (not once its exec is assembled).
                self._daemon_exec(m.payload)
            done = self.asm.feed(m.type, m.payload, now)
            if done:
                self._send(done)
        if self.asm.malformed:
            self.c.health.drop("malformed", self.asm.malformed)
            self.asm.malformed = 0
        if self.asm.incomplete:
            self.c.health.drop("incomplete", self.asm.incomplete)
            self.asm.incomplete = 0

    def _send(self, events: list[Event]) -> None:
        for ev in events:
            if ev.kind in ("media.mount", "media.unmount"):
                # Whether a mount is removable media, and which, is the media collector's to say;
                # it asks here who made it. A mount alone is not an event of its own.
                mounts = self.c._mounts
                if len(mounts) > 1024:
                    mounts.clear()
                if ev.media.mount is not None:
                    mounts[posixpath.normpath(ev.media.mount)] = (ev.process, ev.parent, time.monotonic())
                continue
            if ev.kind == "process.exec" and self.mode == "daemon" and \
                    posixpath.basename(ev.process.exe or "") in _DAEMONS and ev.process.pid != self.c.pid:
                self._step_aside(f"audit daemon {ev.process.exe} (pid {ev.process.pid}) started")
            if ev.kind == "inventory.module":
                self.c._module_reported(ev)
            if is_dns_send(ev):
                # The sniffer names the query: one event with its name and this record's process.
                joined = self.c.dns_join.from_audit(ev)
                if joined is None:
                    continue
                ev = joined
            self._out(ev)

    def _out(self, ev: Event) -> None:
        t = ev.time or self.c._sources.clock()
        if self.emit(ev):
            self.c.health.saw(t)
        else:
            self.c.health.drop("emit_rejected")

    def _check_status(self) -> None:
        if self.ctl is None:
            return
        try:
            st = self.ctl.status()
        except OSError:
            return
        if self.lost_seen is not None and st.lost > self.lost_seen:
            self.c.health.drop("kernel_lost", st.lost - self.lost_seen)
        self.lost_seen = st.lost
        if self.mode == "daemon" and st.pid != self.c.pid:
            self._step_aside(f"pid {st.pid} holds the audit daemon role now")
        elif self.mode == "multicast" and st.pid == 0 and self.c._mode != "multicast" and \
                (self.yielded_at is None or time.monotonic() - self.yielded_at >= _YIELD_GRACE):
            # The audit daemon went away: records would go to the kernel log. Take the role.
            self.log.warning("audit: the audit daemon is gone; taking its role")
            self.found = st
            old = self.reader
            self._become_daemon()
            if self.reader is not old and old is not None:
                self._drain_socket(old, within=0.2)  # the daemon socket gets every record from now on
                old.close()
            self.c.health.mode = self.mode


_COVERS = {"exec": "process.exec", "net": "net.connect", "sock": "", "file": "file", "mount": "media.mount",
           "agent": "agent", "module": "module"}


def _pid_field(data: bytes) -> int | None:
    """The agent pid a rule excludes or aims at (every own rule names its agent's pid), if any."""
    import struct

    from collectors.audit_rules import _FIELDS, _HEAD, AUDIT_ARG0, AUDIT_ARG1, AUDIT_PID
    try:
        count = struct.unpack_from("=I", data, 8)[0]
        fields = _FIELDS.unpack_from(data, _HEAD.size)
        values = _FIELDS.unpack_from(data, _HEAD.size + _FIELDS.size)
    except struct.error:
        return None
    for i in range(min(count, len(fields))):
        if fields[i] in (AUDIT_PID, AUDIT_ARG0, AUDIT_ARG1):
            return int(values[i])
    return None


def _mine(data: bytes, pid: int) -> bool:
    owner = _pid_field(data)
    return owner is None or owner == pid


def _stale(data: bytes, pid: int) -> bool:
    owner = _pid_field(data)
    if owner is None or owner == pid:
        return owner is None
    return not os.path.exists(f"/proc/{owner}")
