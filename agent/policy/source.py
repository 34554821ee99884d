"""Where policy bundles come from: an HTTPS URL pulled on a schedule, or an inbox folder.

HTTPS: a plain static file server is enough. The last ``ETag`` is sent back
as ``If-None-Match``, so an unchanged bundle costs one small request; a CA
bundle (``policy.ca``) and a client certificate (``policy.cert``/``key``,
mutual TLS) are optional. A bundle already judged (by its SHA-256) is not
judged again.

``dir:/PATH``: bundles (``*.json``) dropped there by a one-way import device
or a USB transfer station. A file still being written (changed within the
last two seconds, or named with a leading dot) waits for the next look;
each judged bundle moves to ``applied/`` or ``refused/`` beside it (with a
``.reason`` file), so the inbox shows what became of every delivery.

One thread; it sleeps on the stop event between looks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from agent.config import PolicyConfig
from agent.policy.bundle import MAX_BUNDLE_BYTES
from agent.policy.store import Decision

_log = logging.getLogger("dutywatch")
SETTLE_SECONDS = 2.0

Offer = Callable[[bytes, str], Decision]


class PolicySource:
    """Looks for new bundles every ``policy.every`` and hands each new one to ``offer``."""

    def __init__(self, cfg: PolicyConfig, offer: Offer, *, clock: Callable[[], float] = time.time) -> None:
        assert cfg.source is not None
        self.cfg = cfg
        self.offer = offer
        self.clock = clock
        self.etag: str | None = None
        self.judged: set[str] = set()
        self.errors = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Look now, then every ``policy.every``."""
        self._thread = threading.Thread(target=self._run, name="policy", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop looking (a fetch in progress is not cut)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def poke(self) -> None:
        """Look again now (e.g. after a reload)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.look()
            except Exception:  # one bad look must not end the thread; the next look tries again
                _log.exception("policy source %s: look failed", self.cfg.source)
            self._wake.wait(self.cfg.every)
            self._wake.clear()

    def look(self) -> list[Decision]:
        """One look at the source; the decisions on what was new."""
        src = self.cfg.source or ""
        if src.startswith("dir:"):
            return self._inbox(Path(src[4:]))
        data = self._fetch(src)
        if data is None:
            return []
        return [self._judge(data, src)]

    def _judge(self, data: bytes, origin: str) -> Decision:
        digest = hashlib.sha256(data).hexdigest()
        decision = self.offer(data, origin)
        self.judged.add(digest)
        return decision

    # -- HTTPS ------------------------------------------------------------------------------------
    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cfg.ca) if self.cfg.ca else None)
        if self.cfg.cert is not None and self.cfg.key is not None:
            ctx.load_cert_chain(str(self.cfg.cert), str(self.cfg.key))
        return ctx

    def _fetch(self, url: str) -> bytes | None:
        headers = {"User-Agent": "dutywatch-policy"}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if not url.startswith("https://"):  # the config allows nothing else; never file: or http:
            raise ValueError(f"policy source {url!r} is not https")
        req = urllib.request.Request(url, headers=headers)  # noqa: S310 (https only, checked above)
        try:
            with urllib.request.urlopen(req, timeout=30, context=self._context()) as resp:  # noqa: S310
                data: bytes = resp.read(MAX_BUNDLE_BYTES + 1)
                etag = resp.headers.get("ETag")
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return None
            self.errors += 1
            _log.warning("policy source %s: HTTP %s %s", url, exc.code, exc.reason)
            return None
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            self.errors += 1
            _log.warning("policy source %s: %s", url, getattr(exc, "reason", exc))
            return None
        self.etag = etag
        if hashlib.sha256(data).hexdigest() in self.judged:
            return None
        return data

    # -- inbox ------------------------------------------------------------------------------------
    def _inbox(self, inbox: Path) -> list[Decision]:
        try:
            names = sorted((p for p in inbox.iterdir() if p.suffix == ".json" and not p.name.startswith(".")),
                           key=lambda p: (p.stat().st_mtime, p.name))
        except FileNotFoundError:
            return []
        out = []
        now = self.clock()
        for p in names:
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            if not p.is_file() or p.is_symlink():
                continue
            if now - st.st_mtime < SETTLE_SECONDS:
                continue  # still being written, perhaps: next look
            with open(p, "rb") as f:
                data = f.read(MAX_BUNDLE_BYTES + 1)
            decision = self._judge(data, str(p))
            out.append(decision)
            self._move(inbox, p, decision)
        return out

    @staticmethod
    def _move(inbox: Path, p: Path, decision: Decision) -> None:
        where = inbox / ("applied" if decision.accepted or decision.reason == "same" else "refused")
        where.mkdir(mode=0o750, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = where / f"{stamp}-{p.name}"
        os.replace(p, target)
        if not decision.accepted:
            target.with_name(target.name + ".reason").write_text(f"{decision.reason}: {decision.detail}\n",
                                                                 encoding="utf-8")
