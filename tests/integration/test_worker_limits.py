"""Worker limits that do not depend on setrlimit: the parent's memory bound, and what a worker does
when a service's system call filter refuses setrlimit (a stricter drop-in than the shipped unit)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from collectors import sandbox

REPO = Path(__file__).resolve().parents[2]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (it drops to nobody and unshares)")


def test_a_worker_past_its_memory_bound_is_stopped(tmp_path: Path) -> None:
    """Checked by the parent while it waits, whatever limits the worker could set on itself."""
    (tmp_path / "dw_hungry_worker.py").write_text(textwrap.dedent("""
        import socket, sys, time
        from collectors.sandbox import worker_hello
        sock = socket.socket(fileno=int(sys.argv[1]))
        worker_hello(sock, memory=int(sys.argv[2]), cpu_seconds=60, files=8, confine_it=False)
        held = []
        while True:
            msg = sock.recv(100)
            if msg == b"small":
                sock.send(b'"ok"')
                continue
            for _ in range(40):  # 200 MiB touched, then no answer
                held.append(bytearray(5 << 20))
            time.sleep(60)
    """))
    w = sandbox.WorkerProcess("test worker", "dw_hungry_worker", memory=64 << 20, confine=False, backoff=1.0,
                              env={"PYTHONPATH": f"{tmp_path}:{REPO}"})
    try:
        w.send(b"small")
        assert w.receive(time.monotonic() + 20, "late") == "ok"  # the near miss: a worker within its bound
        w.send(b"big")
        t = time.monotonic()
        with pytest.raises(sandbox.WorkerLost, match=r"passed its memory bound of 64 MiB \(\d+ MiB resident\)"):
            w.receive(time.monotonic() + 30, "late")
        assert time.monotonic() - t < 25  # stopped for its memory, not at the deadline
        assert w.killed == 1 and w.restarts == 1 and w.pid is None
    finally:
        w.stop()


# A filter such as a service's SystemCallFilter=~@resources plus prlimit64: both ways to set a limit refused.
NO_RLIMIT = textwrap.dedent("""
    import json, os, struct, sys
    from collectors import sandbox
    from collectors.dns_worker import DnsWorker
    calls = {"x86_64": (160, 302), "aarch64": (164, 261)}[sys.argv[1]]
    arch = sandbox.ARCHES[sys.argv[1]].audit
    i = sandbox._insn
    prog = [i(0x20, 0, 0, 4), i(0x15, 1, 0, arch), i(0x06, 0, 0, 0x7FFF0000), i(0x20, 0, 0, 0)]
    for nr in calls:
        prog += [i(0x15, 0, 1, nr), i(0x06, 0, 0, 0x00050000 | 1)]
    prog.append(i(0x06, 0, 0, 0x7FFF0000))
    libc = sandbox._libc()
    libc.prctl(sandbox.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    sandbox._install_seccomp(libc, b"".join(prog))
    w = DnsWorker()
    w.start()
    q = (b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00"
         b"\\x03www\\x07example\\x03com\\x00\\x00\\x1c\\x00\\x01")
    name = w.parse([q])[0].name
    pid = w.pid
    print(json.dumps({"problems": w.confinement["problems"], "name": name,
                      "oom": open(f"/proc/{pid}/oom_score_adj").read().strip(),
                      "proc_owner": os.stat(f"/proc/{pid}/status").st_uid,
                      "uid": int(open(f"/proc/{pid}/status").read().split("Uid:")[1].split()[0])}))
    w.close()
""")


@pytest.mark.root
@root_only
def test_worker_where_setrlimit_is_refused_says_so_and_takes_the_fallback() -> None:
    if platform.machine() not in sandbox.ARCHES:
        pytest.skip("no filter for this machine")
    out = subprocess.run([sys.executable, "-c", NO_RLIMIT, platform.machine()], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["name"] == "www.example.com"  # it still parses
    [problem] = result["problems"]
    assert problem.startswith("resource limits not set (RLIMIT_AS: ")
    assert "oom_score_adj 1000, not dumpable, the parent stops it past its memory bound" in problem
    assert result["oom"] == "1000"
    assert result["uid"] == 65534 and result["proc_owner"] == 0  # not dumpable: its /proc entries are root's
