"""Run the real agent (`python -m agent run`) in a subprocess against files in a temp dir."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

REGISTRY = """\
host: {{id: test-host-01, unit: 测试信息中心, department: 测试委员会, custodian: zhangsan, level: secret,
       zone: intranet}}
departments: [{{name: 测试委员会}}]
units: [{{name: 测试信息中心, department: 测试委员会}}]
people:
  - {{account: zhangsan, uid: 1000, name: 张三, unit: 测试信息中心, clearance: secret}}
  - {{account: root, uid: 0, name: 系统管理员, unit: 测试信息中心, clearance: top_secret}}
zones:
  default: internet
  networks:
    - {{name: intranet, cidrs: [10.0.0.0/8]}}
    - {{name: loopback, cidrs: [127.0.0.0/8, "::1/128"]}}
assets:
  - {{path: "{assets}/**", level: secret, unit: 测试信息中心}}
"""


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentProcess:
    """One agent subprocess with its own config, registry, rules and state directory."""

    def __init__(self, tmp: Path, *, collectors: str, rules: list[str] | None = None,
                 extra_config: str = "", registry: str | None = None, module: str = "agent") -> None:
        self.tmp = tmp
        self.module = module  # tests.bench.named_agent names each thread in the kernel
        self.port = free_port()
        self.state = tmp / "state"
        self.assets = tmp / "assets"
        self.assets.mkdir(exist_ok=True)
        self.registry = tmp / "registry.yaml"
        self.registry.write_text(registry or REGISTRY.format(assets=self.assets), encoding="utf-8")
        self.config = tmp / "agent.yaml"
        rules_line = f"rules: [{', '.join(rules)}]\n" if rules is not None else ""
        self.config.write_text(
            f"registry: {self.registry}\n{rules_line}state_dir: {self.state}\nlisten: 127.0.0.1:{self.port}\n"
            f"collectors:\n{collectors}\n{extra_config}"
            # The configuration assessment runs only in the tests about it.
            + ("" if "assess:" in extra_config else "\nassess: {enabled: false}\n"), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "agent.log"

    def start(self, env: dict[str, str] | None = None, timeout: float = 30.0) -> None:
        """Start the agent and wait until /healthz answers."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "run", "--config", str(self.config), "--log-level", "debug"],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})})
        self.wait(lambda: self.healthy(), "agent never became healthy", timeout)

    def healthy(self) -> bool:
        """Whether /healthz answers 200."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def log_text(self) -> str:
        """What the agent logged."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def scrape(self) -> dict[str, float]:
        """The current metrics as {'name{labels}': value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's series whose labels include ``labels``."""
        total = 0.0
        for key, value in self.scrape().items():
            base, _, rest = key.partition("{")
            if base != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += value
        return total

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a dutywatch command against this agent's config."""
        return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                              cwd=REPO, timeout=120, check=check)

    def events(self, *extra: str) -> list[dict[str, Any]]:
        """`dutywatch events --format json` as parsed records."""
        r = self.cli("events", "--config", str(self.config), "--format", "json", "--type", "all", *extra)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Poll ``cond`` until true; fail with ``what`` and the agent's log after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if cond():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}\n--- agent log ---\n{self.log_text()[-6000:]}")
            time.sleep(0.2)

    def signal(self, sig: int) -> None:
        """Send a signal to the agent."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"agent did not stop on SIGTERM\n{self.log_text()[-4000:]}") from None

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
