"""systemd notification (sd_notify) without libsystemd: READY, WATCHDOG, STOPPING, STATUS."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends datagrams to ``$NOTIFY_SOCKET`` when systemd set it; otherwise does nothing."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None

    @property
    def enabled(self) -> bool:
        """Whether systemd is listening."""
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines; False when not under systemd or the send failed.

        Never blocks: a manager that stopped reading its socket must not stop
        the agent's run loop (which also handles stop requests) with it.
        """
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                s.connect(self.address)
                s.send("\n".join(lines).encode())
            return True
        except OSError:  # including BlockingIOError when the manager's queue is full
            return False
