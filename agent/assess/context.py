"""The host under assessment: its files and, cached for one run, the state the probes share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from agent.assess import hostdata
from agent.assess.rootfs import ProbeError, RootFS

T = TypeVar("T")


class HostContext:
    """One run's view of a host. ``commands`` is False on a scanned root: nothing from it is run."""

    def __init__(self, root: str = "/", command_timeout: float = 10.0) -> None:
        self.fs = RootFS(root)
        self.commands = self.fs.live
        self.command_timeout = command_timeout
        self._cache: dict[str, Any] = {}

    def cached(self, name: str, make: Callable[[], T]) -> T:
        """``make()`` once per run; a ProbeError is cached and raised again."""
        if name not in self._cache:
            try:
                self._cache[name] = make()
            except ProbeError as exc:
                self._cache[name] = exc
        value = self._cache[name]
        if isinstance(value, ProbeError):
            raise value
        return value  # type: ignore[no-any-return]

    @property
    def family(self) -> str | None:
        """``debian``, ``rhel`` or None."""
        return self.cached("family", lambda: hostdata.family(self.fs))

    def packages(self) -> dict[str, str]:
        """Installed packages, name to version."""
        return self.cached("packages", lambda: hostdata.packages(self.fs))

    def accounts(self) -> list[hostdata.Account]:
        """Accounts joined with shadow."""
        return self.cached("accounts", lambda: hostdata.accounts(self.fs))

    def groups(self) -> list[hostdata.Group]:
        """Groups."""
        return self.cached("groups", lambda: hostdata.groups(self.fs))

    def modules(self) -> dict[str, str]:
        """Loaded kernel modules."""
        return self.cached("modules", lambda: hostdata.loaded_modules(self.fs))

    def modprobe(self) -> dict[str, list[tuple[str, str, str]]]:
        """modprobe.d directives per module."""
        return self.cached("modprobe", lambda: hostdata.modprobe_rules(self.fs))

    def sysctl_configured(self) -> dict[str, tuple[str, str]]:
        """Kernel parameters as configured."""
        return self.cached("sysctl", lambda: hostdata.sysctl_configured(self.fs))

    def listeners(self) -> list[hostdata.Listener]:
        """Listening sockets with their processes."""
        return self.cached("listeners", lambda: hostdata.listeners(self.fs))

    def sshd(self) -> tuple[dict[str, tuple[str, str]], str]:
        """sshd's settings and how they were found."""
        from agent.assess.configfile import sshd_settings
        return self.cached("sshd", lambda: sshd_settings(self.fs, self.command_timeout))
