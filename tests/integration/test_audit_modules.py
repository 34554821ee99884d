"""Kernel module loads from the audit source on the real kernel: who tried, what the kernel said, the rule.

This machine's kernel may have no module support at all (no /proc/modules): a
load is then refused with ENOSYS, as it is refused with EPERM to a person
without CAP_SYS_MODULE on a kernel that has it. Either way the kernel writes
the record of the call, and the attempt is an ``inventory.module`` event with
``change`` ``refused`` naming the program and the person. A real load of a
module present under /lib/modules is tested where the kernel can load one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from auditkit import TEST_UID, as_person, judge, programs, registry, running

from collectors.audit import AuditCollector

pytestmark = pytest.mark.root

REGISTRY = registry("dw-audit-mod")

# finit_module of the file named in argv[1] (any file: the kernel refuses before or while reading it).
LOADER_C = r"""#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int fd = open(argv[1], O_RDONLY); return syscall(SYS_finit_module, fd, "", 0) == 0 ? 0 : 1; }
"""


@pytest.fixture(scope="module")
def loader() -> Iterator[Path]:
    with programs("mod", {"loader": LOADER_C}) as d:
        yield d / "loader"


def test_a_refused_module_load_names_the_program_the_person_and_the_kernels_reason(
        loader: Path, tmp_path: Path) -> None:
    fake = tmp_path / "rootkit.ko"
    fake.write_bytes(b"\x7fELF" + b"\0" * 60)
    fake.chmod(0o644)
    tmp_path.chmod(0o755)
    c = AuditCollector({})
    with running(c) as run:
        assert c.covers("module"), "the module rules are not in force"
        p = subprocess.Popen([str(loader), str(fake)], preexec_fn=as_person())
        assert p.wait(10) == 1, "the load should have been refused"
        got = run.where(lambda e: e.kind == "inventory.module" and e.process.pid == p.pid)
    assert len(got) == 1, got
    e = got[0]
    assert e.inventory.change == "refused" and e.collector == "audit"
    assert e.process.exe == str(loader) and e.process.loginuid == TEST_UID and e.process.uid == TEST_UID
    want = "ENOSYS" if not os.path.exists("/proc/modules") else "EPERM"  # no module support / no capability
    assert e.detail is not None and e.detail.startswith(f"finit_module refused by the kernel: {want}"), e.detail
    fired = judge(got, REGISTRY, tmp_path)
    assert [(rule, a.operator.account) for rule, a in fired] == [("INV-MOD-003", "tester")]


def _loadable() -> str | None:
    """A small harmless module this kernel can load and remove, if any (dummy, then others)."""
    if not os.path.exists("/proc/modules") or shutil.which("modprobe") is None:
        return None
    loaded = Path("/proc/modules").read_text()
    release = os.uname().release
    for name in ("dummy", "nlmon", "veth", "ifb"):
        if f"{name} " in loaded:
            continue
        found = subprocess.run(["modinfo", "-k", release, "-F", "filename", name], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip():
            return name
    return None


@pytest.mark.skipif(_loadable() is None, reason="this kernel loads no modules (no /proc/modules or no module file)")
def test_a_real_module_load_and_removal_by_a_person_are_each_one_event(tmp_path: Path) -> None:
    name = _loadable()
    assert name is not None
    c = AuditCollector({})
    with running(c) as run:
        subprocess.run(["modprobe", name], check=True, preexec_fn=_login_only)
        subprocess.run(["modprobe", "-r", name], check=True, preexec_fn=_login_only)
        got = run.where(lambda e: e.kind == "inventory.module" and e.inventory.name == name, count=2)
    assert [e.inventory.change for e in got] == ["added", "removed"]
    assert all(e.process.loginuid == TEST_UID for e in got)


def _login_only() -> None:
    with open("/proc/self/loginuid", "w") as f:
        f.write(str(TEST_UID))
