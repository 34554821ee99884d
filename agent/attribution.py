"""Attribution: the registry applied to an event (DESIGN §6).

Names the operator (the person behind ``loginuid``, else ``uid``; a
service account's custodian; otherwise ``known=False``), fills the host
group and the registry-derived fields (zones, asset levels, media). Every
lookup that repeats is cached, bounded: per (loginuid, uid, user) and per
uid's account name (two generations each, so that one-off ids age out and
the usual ones stay), per address and per path.
"""

from __future__ import annotations

import pwd
import time
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import Any

from agent.events import Assess, Auth, Event, File, Host, Iface, Inventory, Media, Net, Operator, Parent, Process
from agent.levels import Level
from agent.mediaid import identify
from agent.packages import Owner, PackageOwners
from agent.registry import Medium, Registry

_NO_INVENTORY, _NO_ASSESS = Inventory(), Assess()  # events of other kinds carry these

UNSET_LOGINUID = 4294967295
_CACHE_LIMIT = 16384
_PACKAGE_TTL = 1.0  # seconds a process's package answer is reused for its next changes
_monotonic = time.monotonic
_NO_ASSET: tuple[Level | None, str | None] = (None, None)
_MISS: Any = object()
_UNKNOWN = Operator(known=False)
_OPERATED = ("process.", "net.", "file.", "auth.", "account.")  # not in a cache (None is a cached answer)
_CHANGES = ("file.", "account.")  # what the package manager's exemption applies to: its exe's package is looked up


def system_account_name(uid: int) -> str | None:
    """The account name of a uid from the system's account database."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


class Attributor:
    """Turns a raw event into an attributed one. Built once per registry."""

    def __init__(self, registry: Registry,
                 account_name: Callable[[int], str | None] = system_account_name,
                 owners: Owner | None = None) -> None:
        self.registry = registry
        self._account_name = account_name
        self._owners = owners if owners is not None else PackageOwners()
        self._host = registry.host
        self._by_uid = {p.uid: p for p in registry.people if p.uid is not None}
        self._by_account = registry.person_by_account()
        # account -> display name, for findings that name the custodian or a medium's holder
        self.names: dict[str, str] = {p.account: p.name for p in registry.people if p.name}
        self._service = {s.account: s.custodian for s in registry.service_accounts}
        # Service accounts named by their systemd unit: (unit glob, custodian), in registry order.
        self._unit_globs = tuple((s.unit, s.custodian) for s in registry.service_accounts if s.unit is not None)
        self._unit_cache: dict[str, Operator | None] = {}
        self._medium_cache: dict[tuple[str | None, ...], tuple[Medium | None, str | None]] = {}
        self._assets = registry.assets
        self._asset_prefixes = tuple(a.prefix for a in registry.assets)
        self._zones = registry.zones
        self._op_cache: dict[tuple[int | None, int | None, str | None], tuple[Operator, str | None]] = {}
        self._op_old: dict[tuple[int | None, int | None, str | None], tuple[Operator, str | None]] = {}
        self._names: dict[int, str | None] = {}
        self._names_old: dict[int, str | None] = {}
        self._zone_cache: dict[str, str | None] = {}
        self._path_cache: dict[str, tuple[Level | None, str | None]] = {}
        self._package_cache: dict[tuple[int | None, float | None, str], tuple[float, str | None]] = {}

    # -- operator ---------------------------------------------------------
    def operator(self, loginuid: int | None, uid: int | None,
                 user: str | None = None) -> tuple[Operator, str | None]:
        """The operator for these ids, and the account name of ``uid``.

        ``user`` is the account name the collector read when the event
        happened; it is trusted over a later lookup of ``uid``.
        """
        key = (loginuid, uid, user)
        hit = self._op_cache.get(key)
        if hit is not None:
            return hit
        hit = self._op_old.get(key)
        if hit is None:
            if user is None and uid is not None:
                user = self.account_name(uid)
            if loginuid is not None and loginuid != UNSET_LOGINUID:
                op = self._resolve(loginuid, None)
            elif uid is not None:
                op = self._resolve(uid, user)
            else:
                op = _UNKNOWN
            hit = (op, user)
        # Two generations, each bounded: a full table becomes the old one, and entries still in
        # use move back, so a storm of one-off ids neither grows memory nor evicts the usual ones.
        if len(self._op_cache) >= _CACHE_LIMIT:
            self._op_old, self._op_cache = self._op_cache, {}
        self._op_cache[key] = hit
        return hit

    def account_name(self, uid: int) -> str | None:
        """The account name of ``uid`` from the account database, remembered (two bounded generations)."""
        if uid in self._names:
            return self._names[uid]
        name = self._names_old[uid] if uid in self._names_old else self._account_name(uid)
        if len(self._names) >= _CACHE_LIMIT:
            self._names_old, self._names = self._names, {}
        self._names[uid] = name
        return name

    def _resolve(self, uid: int, account: str | None) -> Operator:
        person = self._by_uid.get(uid)
        if person is None and account is None:
            account = self.account_name(uid)
        if person is None and account is not None:
            person = self._by_account.get(account)
            if person is None and account in self._service:
                person = self._by_account.get(self._service[account])
        if person is None:
            return Operator(account=account if account is not None else f"uid:{uid}", known=False)
        return Operator(person.account, person.name, person.unit, person.clearance, True)

    def unit_operator(self, unit: str) -> Operator | None:
        """The custodian of the service account whose ``unit`` names this systemd unit, if any (cached)."""
        hit = self._unit_cache.get(unit, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[no-any-return]
        op: Operator | None = None
        for pattern, custodian in self._unit_globs:
            if fnmatchcase(unit, pattern):
                person = self._by_account.get(custodian)
                if person is not None:
                    op = Operator(person.account, person.name, person.unit, person.clearance, True)
                break
        if len(self._unit_cache) >= _CACHE_LIMIT:
            self._unit_cache.clear()
        self._unit_cache[unit] = op
        return op

    def registered(self, account: str) -> bool:
        """Whether the registry names ``account`` as a person's or a service account."""
        return account in self._by_account or account in self._service

    # -- lookups ----------------------------------------------------------
    def zone(self, ip: str | None) -> str | None:
        """The registry zone of an address (cached)."""
        if ip is None:
            return None
        if ip in self._zone_cache:
            return self._zone_cache[ip]
        if len(self._zone_cache) >= _CACHE_LIMIT:
            self._zone_cache.clear()
        z = self._zone_cache[ip] = self._zones.lookup(ip)
        return z

    def asset(self, path: str | None) -> tuple[Level | None, str | None]:
        """The level and owner unit of the most sensitive asset covering ``path``."""
        if path is None or not self._asset_prefixes or not path.startswith(self._asset_prefixes):
            return _NO_ASSET
        hit = self._path_cache.get(path)
        if hit is not None:
            return hit
        best: tuple[Level | None, str | None] = _NO_ASSET
        for a in self._assets:
            if a.pattern.match(path) and (best[0] is None or a.level > best[0]):
                best = (a.level, a.unit)
        if len(self._path_cache) >= _CACHE_LIMIT:
            self._path_cache.clear()
        self._path_cache[path] = best
        return best

    # -- the stage --------------------------------------------------------
    def __call__(self, e: Event) -> Event:
        """The event with operator, host and registry-derived fields filled."""
        return self.build(*e)

    def build(self, kind: str, etime: float | None, collector: str | None, p: Process, parent: Parent,
              op: Operator, host: Host, net: Net, f: File, media: Media, iface: Iface, auth: Auth,
              detail: str | None, inventory: Inventory = _NO_INVENTORY, assess: Assess = _NO_ASSESS) -> Event:
        """The attributed event of these parts (an Event's fields, in order): the decoder hands them over directly."""
        # Runs once per event: the caches are read inline, misses go to the methods above.
        if p.uid is not None or p.loginuid is not None:
            hit = self._op_cache.get((p.loginuid, p.uid, p.user))
            op, user = hit if hit is not None else self.operator(p.loginuid, p.uid, p.user)
            if p.user is None and user is not None:
                p = _TUPLE_NEW(Process, (*p[:7], user, *p[8:]))
            if (p.unit is not None and self._unit_globs and (p.loginuid is None or p.loginuid == UNSET_LOGINUID)
                    and not op.known):
                # A daemon with no login identity: its systemd unit names the service account it runs as.
                by_unit = self.unit_operator(p.unit)
                if by_unit is not None:
                    op = by_unit
        elif p.unit is not None and self._unit_globs and (by_unit := self.unit_operator(p.unit)) is not None:
            op = by_unit
        elif op.known is None and kind.startswith(_OPERATED):
            # An operation some process did, with no id to name anyone by: no one answers for it,
            # which is False (never None), so the accountability rules and the report see it.
            # (A mount the media collector saw, an interface, the agent itself: no operator applies.)
            op = _UNKNOWN
        if p.exe is not None and p.package is None and kind.startswith(_CHANGES) and collector != "files":
            package = self._package(p.pid, p.start_time, p.exe)
            if package is not None:
                p = _TUPLE_NEW(Process, (*p[:11], package, *p[12:]))
        if net.remote_ip is not None or net.local_ip is not None:
            zones = self._zone_cache
            rz = net.remote_zone
            if rz is None and net.remote_ip is not None:
                rz = zones.get(net.remote_ip, _MISS)
                if rz is _MISS:
                    rz = self.zone(net.remote_ip)
            lz = net.local_zone
            if lz is None and net.local_ip is not None:
                lz = zones.get(net.local_ip, _MISS)
                if lz is _MISS:
                    lz = self.zone(net.local_ip)
            if rz is not net.remote_zone or lz is not net.local_zone:
                net = _TUPLE_NEW(Net, (*net[:6], rz, net[7], lz, *net[9:]))
        if f.path is not None and f.level is None:
            f = self._file(f)
        if media.serial is not None and media.registered is None:
            media = self._medium(media)
        if iface.ip is not None and iface.zone is None:
            iface = iface._replace(zone=self.zone(iface.ip))
        if auth.account is not None and auth.registered is None:
            auth = auth._replace(registered=self.registered(auth.account))
        event: Event = _TUPLE_NEW(Event, (kind, etime, collector, p, parent, op, self._host, net, f, media, iface,
                                          auth, detail, inventory, assess))
        return event

    def for_records(self, empty: Mapping[str, Any]) -> Callable[[Any], bool]:
        """Attribution of a record (``agent.records``) in place: what ``build`` does to an Event's parts.

        The function returned fills a record's operator, host, process user
        and package, zones and file asset, and answers True; or answers False
        and leaves the record alone when ``build`` would do more than that (a
        process without uid or login uid, a systemd unit, a medium, an
        interface or a login): the caller then builds the Event. ``empty``
        holds the records' empty groups.
        """
        from msgspec.structs import astuple

        new = _TUPLE_NEW
        op_cache, operator, host = self._op_cache, self.operator, self._host
        zones, zone = self._zone_cache, self.zone
        package_of, file_asset = self._package, self._file_asset
        no_media, no_iface, no_auth = empty["media"], empty["iface"], empty["auth"]

        def attribute(r: Any) -> bool:
            # Runs once per replayed event: every branch is build's, in build's order.
            p = r.process
            uid = p.uid
            loginuid = p.loginuid
            if ((uid is None and loginuid is None) or p.unit is not None or r.media is not no_media
                    or r.iface is not no_iface or r.auth is not no_auth):
                return False
            user = p.user
            hit = op_cache.get((loginuid, uid, user))
            r.operator, name = hit if hit is not None else operator(loginuid, uid, user)
            r.host = host
            if user is None and name is not None:
                v = astuple(p)
                r.process = p = new(Process, (*v[:7], name, *v[8:]))
            exe = p.exe
            if exe is not None and p.package is None:
                head = r.event
                if head.kind.startswith(_CHANGES) and head.collector != "files":
                    package = package_of(p.pid, p.start_time, exe)
                    if package is not None:
                        v = p if isinstance(p, tuple) else astuple(p)
                        r.process = new(Process, (*v[:11], package, *v[12:]))
            n = r.net
            rip = n.remote_ip
            lip = n.local_ip
            if rip is not None or lip is not None:
                rz = n.remote_zone
                if rz is None and rip is not None:
                    rz = zones.get(rip, _MISS)
                    if rz is _MISS:
                        rz = zone(rip)
                lz = n.local_zone
                if lz is None and lip is not None:
                    lz = zones.get(lip, _MISS)
                    if lz is _MISS:
                        lz = zone(lip)
                if rz is not n.remote_zone or lz is not n.local_zone:
                    v = astuple(n)
                    r.net = new(Net, (*v[:6], rz, v[7], lz, *v[9:]))
            f = r.file
            if f.path is not None and f.level is None:
                level, unit = file_asset(f)
                if level is not None:
                    r.file = new(File, astuple(f))._replace(level=level, owner_unit=f.owner_unit or unit)
            return True

        return attribute

    def _package(self, pid: int | None, start_time: float | None, exe: str) -> str | None:
        # What the program is, by the package database, for the package manager's exemption (the
        # files collector looked while the process ran; the others' events are looked up here, ms later).
        # The answer is kept a second per process (pid, start time) and program: a storm of one
        # process's changes makes no two stat calls per event (each would hand the GIL away).
        key = (pid, start_time, exe)
        now = _monotonic()
        known = self._package_cache.get(key)
        if known is not None and now - known[0] < _PACKAGE_TTL:
            return known[1]
        package = self._owners(exe, pid)
        if len(self._package_cache) >= _CACHE_LIMIT:
            self._package_cache.clear()
        self._package_cache[key] = (now, package)
        return package

    def _file_asset(self, f: Any) -> tuple[Level | None, str | None]:
        """The level and owner unit of the most sensitive asset a file operation touches (a File or a record's)."""
        level, unit = self.asset(f.path)
        # The destination of a move, and the asset the file is (another name of it) or was copied from.
        for other in (f.dest_path, f.source_path):
            if other is not None:
                olevel, ounit = self.asset(other)
                if olevel is not None and (level is None or olevel > level):
                    level, unit = olevel, ounit
        return level, unit

    def _file(self, f: File) -> File:
        level, unit = self._file_asset(f)
        if level is None:
            return f
        return f._replace(level=level, owner_unit=f.owner_unit or unit)

    def _medium(self, media: Media) -> Media:
        key = (media.serial, media.usb_serial, media.uuid, media.vendor, media.product)
        hit = self._medium_cache.get(key)
        if hit is None:
            hit = identify(media, self.registry.media)
            if len(self._medium_cache) >= _CACHE_LIMIT:
                self._medium_cache.clear()
            self._medium_cache[key] = hit
        m, mismatch = hit
        if m is None:
            return media._replace(registered=False, mismatch=mismatch)
        return media._replace(registered=True, level=m.level, holder=m.holder)


# tuple.__new__ skips the named tuples' generated keyword __new__: attribution runs per event.
_TUPLE_NEW: Any = tuple.__new__


__all__ = ["UNSET_LOGINUID", "Attributor", "Event", "File", "Iface", "Net", "Process",
           "system_account_name"]
