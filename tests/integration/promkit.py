"""Debian's Prometheus for the report tests: on a loopback port, scraping given targets every second."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agent_harness import free_port


@contextlib.contextmanager
def prometheus(tmp: Path, targets: list[str]) -> Iterator[str]:
    """Prometheus scraping ``targets`` (host:port) every second as job ``dutywatch``, its data in ``tmp``;
    yields its URL once it is ready and stops it after. Skips the test when it is not installed or never
    gets ready (its log's end is in the message)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    listed = ", ".join(f"'{t}'" for t in targets)
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: dutywatch\n    static_configs:\n      - targets: [{listed}]\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "prometheus.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.skip(f"prometheus did not start: {log.read_text()[-500:]}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
