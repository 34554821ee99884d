"""Build the configured collectors (each module imported only when enabled)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from agent.daemon.ownfiles import audit_watches, file_trees
from collectors.base import Collector, Sources

_log = logging.getLogger("dutywatch.collectors")


def build_collectors(sections: Mapping[str, Mapping[str, Any]], sources: Sources,
                     extra_paths: tuple[str, ...] = (), assets: tuple[str, ...] = (),
                     own: tuple[str, ...] = ()) -> list[Collector]:
    """The enabled collectors that can run here; each says its mode, or why it cannot run.

    ``assets`` are the registry's asset globs: the files collector knows those files by inode.
    ``own`` are the agent's own files (``agent.daemon.ownfiles``): watched by the audit source
    and the files collector whatever ``collectors.files.paths`` says.
    """
    built: dict[str, Collector] = {}
    # audit first: the others leave to it what its rules cover and ask it who mounted what;
    # media before files, which asks it which mounts are removable.
    for name in ("audit", "media", "process", "network", "files", "host"):
        section = sections.get(name, {})
        if not section.get("enabled", True):
            continue
        c = _make(name, section, sources, extra_paths, built, assets, own)
        if c is None:
            continue
        avail = c.available()
        if avail.mode is None or avail.mode == "off":
            if avail.mode == "off":  # shown as collector_up{mode="off"} 0, and the others report alone
                built[name] = c
                c.health.mode = "off"
            _log.warning("collector %s cannot run here: %s", name, avail.reason)
            continue
        if avail.reason:
            _log.warning("collector %s runs in %s mode: %s", name, avail.mode, avail.reason)
        else:
            _log.info("collector %s runs in %s mode", name, avail.mode)
        c.health.mode = avail.mode
        built[name] = c
    return list(built.values())


def _marker() -> Any:
    """Marking scans run in a confined worker process, fed descriptors (collectors.marking_worker)."""
    from collectors.marking_worker import MarkingWorker
    worker = MarkingWorker()

    def warm() -> None:  # start it now (a few seconds of imports), not on the first document
        try:
            worker.start()
        except OSError as exc:
            _log.warning("marking worker did not start yet (tried again on the first file): %s", exc)
    threading.Thread(target=warm, name="marking-worker-start", daemon=True).start()

    class Mark:
        def __call__(self, path: str, fd: int) -> Any:
            return worker.scan(fd, path)

        def many(self, files: list[tuple[str, int]]) -> Any:  # a burst: one hand-over for the batch
            return worker.scan_many([(fd, path) for path, fd in files])
    return Mark()


def _make(name: str, section: Mapping[str, Any], sources: Sources, extra_paths: tuple[str, ...],
          built: Mapping[str, Collector], assets: tuple[str, ...] = (), own: tuple[str, ...] = ()) -> Collector | None:
    if name == "media":
        from collectors.media import MediaCollector
        return MediaCollector(section, sources, audit=built.get("audit"))
    if name == "network":
        from collectors.network import NetworkCollector
        return NetworkCollector(section, sources, audit=built.get("audit"))
    if name == "files":
        from collectors.files import FilesCollector
        return FilesCollector(section, sources, extra_paths=(*extra_paths, *file_trees(own)),
                              media=built.get("media"),  # type: ignore[arg-type]
                              marker=_marker(), assets=assets, audit=built.get("audit"), processes=built.get("process"))
    if name == "host":
        from collectors.host import HostCollector
        return HostCollector(section, sources)
    if name == "process":
        from collectors.process import ProcessCollector
        return ProcessCollector(section, sources, poll_interval=float(section.get("interval", 1.0)),
                                audit=built.get("audit"), namespaces=built.get("media"))  # type: ignore[arg-type]
    if name == "audit":
        from collectors.audit import AuditCollector
        return AuditCollector(section, sources, asset_paths=extra_paths, own_paths=audit_watches(own))
    return None
