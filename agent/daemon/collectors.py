"""Build the configured collectors (each module imported only when enabled)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from collectors.base import Collector, Sources

_log = logging.getLogger("dutywatch.collectors")


def build_collectors(sections: Mapping[str, Mapping[str, Any]], sources: Sources,
                     extra_paths: tuple[str, ...] = ()) -> list[Collector]:
    """The enabled collectors that can run here; each says its mode, or why it cannot run."""
    out: list[Collector] = []
    for name, section in sections.items():
        if not section.get("enabled", True):
            continue
        factory = _FACTORIES.get(name)
        if factory is None:
            _log.warning("collector %s is not available in this build", name)
            continue
        c = factory(section, sources, extra_paths)
        if c is None:
            continue
        avail = c.available()
        if avail.mode is None:
            _log.warning("collector %s cannot run here: %s", name, avail.reason)
            continue
        if avail.reason:
            _log.warning("collector %s runs in %s mode: %s", name, avail.mode, avail.reason)
        else:
            _log.info("collector %s runs in %s mode", name, avail.mode)
        c.health.mode = avail.mode
        out.append(c)
    return out


_FACTORIES: dict[str, Any] = {}
