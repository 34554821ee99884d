"""The marking worker: a confined process fed descriptors, stopped inside a file that keeps its parser busy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.levels import Level
from collectors.marking import scan_file
from collectors.marking_worker import FILES, MEMORY, MarkingWorker
from tests.integration.worker_checks import assert_confined, proc_status
from tests.unit.marking_docs import ofd, ole2, rtf, rtf_escape, word_doc

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (it drops to nobody and unshares)")
REPO = Path(__file__).resolve().parents[2]


def _pdf(objects: list[bytes]) -> bytes:
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<</Size {len(objects) + 1}/Root 1 0 R>>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def busy_pdf(ops: int = 400_000) -> bytes:
    """A PDF of a few KiB whose one page holds ``ops`` text operators: pypdf's extractor spends
    tens of seconds inside that single page, where the scan's own between-page check never runs."""
    stream = zlib.compress(b"BT /F1 1 Tf " + b"(a) Tj " * ops + b"ET", 9)
    return _pdf([b"<</Type/Catalog/Pages 2 0 R>>", b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
                 b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]/Contents 4 0 R"
                 b"/Resources<</Font<</F1 5 0 R>>>>>>",
                 f"<</Length {len(stream)}/Filter/FlateDecode>>stream\n".encode() + stream + b"\nendstream",
                 b"<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>"])


@pytest.fixture
def worker() -> Iterator[MarkingWorker]:
    w = MarkingWorker(max_seconds=2.0, grace=1.0)
    yield w
    w.close()


def scan(w: MarkingWorker, path: Path) -> object:
    fd = os.open(path, os.O_RDONLY)
    try:
        return w.scan(fd, str(path))
    finally:
        os.close(fd)


@pytest.mark.root
@root_only
def test_worker_holds_no_privilege(worker: MarkingWorker) -> None:
    worker.start()
    assert worker.pid is not None
    assert_confined(worker.pid, worker.confinement, files=FILES, memory=MEMORY)


PROBE = textwrap.dedent("""
    import json, os, socket, subprocess, sys
    from collectors.sandbox import confine
    c = confine(memory=1 << 30, cpu_seconds=60)
    def attempt(f):
        try:
            f()
            return "allowed"
        except OSError as e:
            return type(e).__name__
    out = {
        "socket": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
        "unix": attempt(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)),
        "fork": attempt(lambda: os.fork() and None),
        "exec": attempt(lambda: subprocess.run(["/bin/true"])),
        "write": attempt(lambda: open(sys.argv[1] + "/new.txt", "w")),
        "append": attempt(lambda: open(sys.argv[1] + "/old.txt", "a")),
        "unlink": attempt(lambda: os.unlink(sys.argv[1] + "/old.txt")),
        "read": attempt(lambda: open(sys.argv[1] + "/old.txt").read()),
        "problems": c.problems(),
    }
    print(json.dumps(out))
""")


@pytest.mark.root
@root_only
def test_confined_process_cannot_open_sockets_spawn_or_write() -> None:
    # A folder nobody may write to by its mode, so only the filter can be what refuses.
    with tempfile.TemporaryDirectory(prefix="dw-marking-") as d:
        _probe(Path(d))


def _probe(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    old = tmp_path / "old.txt"
    old.write_text("x")
    old.chmod(0o666)  # even where the file mode would let anyone write
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["problems"] == []
    for what in ("socket", "unix", "fork", "exec", "write", "append", "unlink"):
        assert result[what] in ("PermissionError", "OSError"), (what, result[what])
    assert result["read"] == "allowed"  # the near miss: reading what nobody may read still works
    assert old.read_text() == "x" and not (tmp_path / "new.txt").exists()


@pytest.mark.root
@root_only
def test_worker_reads_through_the_passed_descriptor_only(worker: MarkingWorker, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    doc = private / "n.txt"
    doc.write_text("机密★10年\n通知")
    doc.chmod(0o600)  # the worker runs as nobody: it could never open this path itself
    result = scan(worker, doc)
    assert (result.status, result.level) == ("marked", Level.SECRET)  # type: ignore[attr-defined]


def _fixtures(tmp_path: Path) -> dict[str, bytes]:
    return {
        "a.ofd": ofd([["机密★10年"]]),
        "b.doc": ole2(word_doc(["秘密★1年\r正文\r"])),
        "c.rtf": rtf(rtf_escape("绝密★长期")),
        "d.txt": "机密★\n".encode("utf-16-le"),
        "e.txt": "正文".encode(),
    }


@pytest.mark.root
@root_only
def test_worker_finds_what_the_in_process_scan_finds(worker: MarkingWorker, tmp_path: Path) -> None:
    for name, data in _fixtures(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(data)
        assert scan(worker, path) == scan_file(path), name


@pytest.mark.root
@root_only
def test_hostile_pdf_is_stopped_inside_the_page_and_reported_unscanned(
        worker: MarkingWorker, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.pdf"
    hostile.write_bytes(busy_pdf())
    assert hostile.stat().st_size < 8192
    worker.start()
    first = worker.pid
    result = scan(worker, hostile)
    assert result.status == "unscanned"  # type: ignore[attr-defined]
    assert "the parser was stopped" in result.reason  # type: ignore[attr-defined]
    assert worker.killed == 1 and worker.pid is None
    # The next file is scanned by a new worker.
    doc = tmp_path / "next.txt"
    doc.write_text("秘密★\n")
    assert scan(worker, doc).level is Level.CONFIDENTIAL  # type: ignore[attr-defined]
    assert worker.pid not in (None, first)


@pytest.mark.root
@root_only
def test_a_batch_is_answered_file_by_file_and_a_hostile_file_holds_only_itself(
        worker: MarkingWorker, tmp_path: Path) -> None:
    """A burst goes over in one request; a file that keeps the parser busy is stopped on its own time
    cap, and the files after it in the same batch are scanned by the next worker, each exactly as
    the in-process scan does."""
    paths = []
    for name, data in _fixtures(tmp_path).items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    hostile = tmp_path / "hostile.pdf"
    hostile.write_bytes(busy_pdf())
    batch = [paths[0], paths[1], hostile, *paths[2:]]
    fds = [os.open(p, os.O_RDONLY) for p in batch]
    try:
        worker.start()
        first = worker.pid
        results = worker.scan_many(list(zip(fds, map(str, batch), strict=True)))
    finally:
        for fd in fds:
            os.close(fd)
    assert len(results) == len(batch)
    assert results[2].status == "unscanned" and "the parser was stopped" in results[2].reason
    for path, result in zip(batch, results, strict=True):
        if path != hostile:
            assert result == scan_file(path), path.name
    assert worker.killed == 1 and worker.pid not in (None, first)


@pytest.mark.root
@root_only
def test_many_small_files_take_one_request(worker: MarkingWorker, tmp_path: Path) -> None:
    paths = []
    for i in range(40):  # more than one batch
        p = tmp_path / f"n{i}.txt"
        p.write_text("机密★\n" if i % 3 == 0 else "正文\n")
        paths.append(p)
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    try:
        results = worker.scan_many(list(zip(fds, map(str, paths), strict=True)))
    finally:
        for fd in fds:
            os.close(fd)
    assert [r.level for r in results] == [Level.SECRET if i % 3 == 0 else None for i in range(40)]
    assert worker.restarts == 0


@pytest.mark.root
@root_only
def test_worker_crash_is_reported_and_the_worker_restarted(worker: MarkingWorker, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.pdf"
    hostile.write_bytes(busy_pdf())
    worker.start()
    pid = worker.pid
    assert pid is not None
    # A parser fault, as a memory-safety bug would end it: the worker gets SIGSEGV mid-file.
    threading.Timer(0.5, os.kill, (pid, signal.SIGSEGV)).start()
    result = scan(worker, hostile)
    assert (result.status, result.reason) == ("unscanned", "marking worker died (SIGSEGV)")  # type: ignore[attr-defined]
    assert worker.restarts == 1
    doc = tmp_path / "n.txt"
    doc.write_text("机密★\n")
    assert scan(worker, doc).level is Level.SECRET  # type: ignore[attr-defined]


@pytest.mark.root
@root_only
def test_worker_exits_with_the_agent(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import sys
        from collectors.marking_worker import FILES, MEMORY, MarkingWorker
        w = MarkingWorker()
        w.start()
        print(w.pid, flush=True)
        sys.stdin.read()
    """)
    agent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True)
    assert agent.stdout is not None
    pid = int(agent.stdout.readline())
    agent.kill()
    agent.wait()
    end = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < end:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}/status").exists() or "Z" in proc_status(pid).get("State", "")


SPAWN = textwrap.dedent("""
    import json, os
    from collectors.marking_worker import FILES, MEMORY, MarkingWorker
    def caps(pid):
        st = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
        return {k: int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapAmb")}
    w = MarkingWorker()
    w.start()
    print(json.dumps({"agent": caps(os.getpid()), "worker": caps(w.pid), "problems": w.confinement["problems"]}))
    w.close()
""")


@pytest.mark.root
@root_only
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_worker_of_a_service_holding_ambient_capabilities_starts_with_none() -> None:
    # As systemd runs the agent: capabilities held as ambient ones, uid 0 without root's own powers.
    caps = "+sys_admin,+dac_read_search"
    out = subprocess.run(["setpriv", "--securebits", "+noroot,+noroot_locked", "--inh-caps", caps,
                          "--ambient-caps", caps, "--bounding-set", f"-all,{caps}", sys.executable, "-c", SPAWN],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["agent"]["CapEff"] != 0 and result["agent"]["CapAmb"] != 0  # the agent keeps its own
    assert result["worker"] == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapAmb": 0}
    # Without CAP_SYS_ADMIN in the worker no namespace can be made; the filter still refuses sockets.
    assert all("namespace" in p for p in result["problems"])



@pytest.mark.root
@root_only
def test_a_stuck_file_dies_by_its_own_cpu_budget_when_the_parent_waits_long(tmp_path: Path) -> None:
    """The worker's CPU limit is the backstop when the parent is slow to stop it: it still holds for
    a file deep in a warm worker (whose limit is re-set only when a file's budget needs it), and
    the quick files around that file keep their results."""
    w = MarkingWorker(max_seconds=1.0, grace=120.0)
    try:
        quick = []
        for i in range(20):
            p = tmp_path / f"q{i}.txt"
            p.write_text("秘密★\n" if i % 2 else "正文\n")
            quick.append(p)
        hostile = tmp_path / "hostile.pdf"
        hostile.write_bytes(busy_pdf())
        for batch in (quick, [*quick[:3], hostile, *quick[3:6]]):
            fds = [os.open(p, os.O_RDONLY) for p in batch]
            try:
                t = time.monotonic()
                results = w.scan_many(list(zip(fds, map(str, batch), strict=True)))
                elapsed = time.monotonic() - t
            finally:
                for fd in fds:
                    os.close(fd)
            for path, result in zip(batch, results, strict=True):
                if path == hostile:
                    assert result.status == "unscanned" and "SIGXCPU" in result.reason, result
                else:
                    assert result == scan_file(path), path.name
        assert elapsed < 100.0  # the worker's own limit, not the parent's 121 s wait, ended the file
        assert w.killed == 0 and w.restarts == 1
    finally:
        w.close()
