"""Build the DutyWatch OS packages: ``build.py deb`` and ``build.py rpm`` write into ``dist/``.

Both packages carry the same tree, staged once under ``build/package/root``:

- ``/opt/dutywatch``: a virtual environment on the target's ``/usr/bin/python3.11``
  holding DutyWatch and the wheels of its dependencies (the host never
  downloads anything); ``/usr/bin/dutywatch`` links to its console script.
- ``/etc/dutywatch``: agent.yaml, an example registry.yaml and web.yml, agent.d/, rules.d/.
- ``/usr/share/dutywatch``: the shipped rule packs with their samples, and
  everything under ``dashboards/`` (Grafana, Prometheus rules, Alertmanager).
- the systemd unit and the documentation.

The environment is created with the staging root's path and then moved: every
script's interpreter line and every mention of the staging path is rewritten to
``/opt/dutywatch``, and the build fails if any mention is left.
"""

from __future__ import annotations

import argparse
import email.message
import email.parser
import gzip
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PREFIX = "/opt/dutywatch"
TARGET_PYTHON = "/usr/bin/python3.11"
PYVER = "python3.11"
# The licence (SPDX) of every distribution the packages bundle, checked against its metadata by
# the packaging tests. A dependency that is not listed stops the build: its licence must be
# known to be compatible with DutyWatch's GPL-2.0-or-later (scapy is GPL-2.0-only) first.
BUNDLED_LICENCES = {
    "bcrypt": "Apache-2.0",
    "cffi": "MIT-0",
    "cryptography": "Apache-2.0 OR BSD-3-Clause",
    "defusedxml": "PSF-2.0",
    "fonttools": "MIT",
    "fpdf2": "LGPL-3.0-only",
    "msgspec": "BSD-3-Clause",
    "olefile": "BSD-2-Clause",
    "pillow": "MIT-CMU",
    "prometheus-client": "Apache-2.0 AND BSD-2-Clause",
    "psutil": "BSD-3-Clause",
    "pycparser": "BSD-3-Clause",
    "pypdf": "BSD-3-Clause",
    "pyyaml": "MIT",
    "scapy": "GPL-2.0-only",
    "typing-extensions": "PSF-2.0",
    "watchdog": "Apache-2.0",
}
OWN_LICENCE = "GPL-2.0-or-later"
CONFFILES = ("etc/dutywatch/agent.yaml", "etc/dutywatch/registry.yaml", "etc/dutywatch/web.yml")


def version() -> str:
    """DutyWatch's version, from agent/__init__.py."""
    for line in (REPO / "agent" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip('"')
    raise SystemExit("no __version__ in agent/__init__.py")


def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run a build step, echoing it; stop the build when it fails."""
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=cwd, env=env)


def build_wheels(work: Path) -> Path:
    """Wheels of DutyWatch and every runtime dependency, for the target's Python."""
    wheels = work / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", wheels, REPO)
    return wheels


def make_venv(root: Path, wheels: Path) -> Path:
    """The environment at ``root/opt/dutywatch``, installed from ``wheels`` only."""
    if not Path(TARGET_PYTHON).is_file():
        raise SystemExit(f"{TARGET_PYTHON} is missing: the package's environment is built on Debian's Python 3.11 "
                         "(apt-get install python3.11)")
    venv = root / PREFIX.lstrip("/")
    run(TARGET_PYTHON, "-m", "venv", "--without-pip", venv)
    # pip runs from the build interpreter but installs for the environment's (Debian's) Python.
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python3", "install", "--quiet", "--no-index",
        "--find-links", wheels, "--no-compile", "--no-warn-script-location", "--disable-pip-version-check",
        "dutywatch")
    tidy(venv)
    relocate(venv)
    return venv


def tidy(venv: Path) -> None:
    """Keep what the agent runs: its own script, stripped extensions, no stray interpreter lines."""
    for f in (venv / "bin").iterdir():
        # Activation scripts and the dependencies' own tools (watchmedo, ...) are not the agent's.
        if f.name != "dutywatch" and not f.name.startswith("python"):
            f.unlink()
    site = venv / "lib" / PYVER / "site-packages"
    # DutyWatch parses YAML with the pure-Python SafeLoader (it needs node marks); the
    # wheel's C extension only embeds a second copy of libyaml.
    for f in site.glob("yaml/_yaml*.so"):
        f.unlink()
    # Wheels' bundled libraries are named lib*.so.N; they are loaded, never run.
    for so in (*site.rglob("*.so"), *site.rglob("*.so.*")):
        if so.is_file() and not so.is_symlink():
            run("strip", "--strip-unneeded", "--remove-section=.comment", "--remove-section=.note", so)
            so.chmod(0o644)
    for py in site.rglob("*.py"):
        # A module is imported, never executed: its "#!" line would only mislead.
        data = py.read_bytes()
        if data.startswith(b"#!"):
            py.write_bytes(data.split(b"\n", 1)[1] if b"\n" in data else b"")


def relocate(venv: Path) -> None:
    """Rewrite what names the staging path so the environment works at ``/opt/dutywatch``."""
    staged = str(venv)
    for f in (venv / "bin").iterdir():
        if f.is_symlink() or not f.is_file():
            continue
        data = f.read_bytes()
        if data.startswith(b"#!"):
            first, _, rest = data.partition(b"\n")
            if b"python" in first:
                data = b"#!" + PREFIX.encode() + b"/bin/python3\n" + rest
        f.write_bytes(data.replace(staged.encode(), PREFIX.encode()))
    cfg = venv / "pyvenv.cfg"
    cfg.write_text(cfg.read_text().replace(staged, PREFIX))
    left = subprocess.run(["grep", "-rlF", staged, str(venv)], capture_output=True, text=True).stdout.split()
    if left:
        raise SystemExit("staging path left in: " + ", ".join(left))


def stage(work: Path) -> Path:
    """The package tree shared by the deb and the rpm, under ``work/root``."""
    root = work / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    venv = make_venv(root, build_wheels(work))
    share = root / "usr/share/dutywatch"
    share.parent.mkdir(parents=True)
    # Rules live where agent.paths looks for an OS package, not inside the environment.
    shutil.move(venv / "share" / "dutywatch", share)
    # Anything else there documents tools the package does not ship.
    shutil.rmtree(venv / "share")
    dashboards = share / "dashboards"
    shutil.copytree(REPO / "dashboards", dashboards, ignore=shutil.ignore_patterns(".*", "__pycache__"))
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/dutywatch").symlink_to(f"{PREFIX}/bin/dutywatch")
    etc = root / "etc/dutywatch"
    for d in ("agent.d", "rules.d"):
        (etc / d).mkdir(parents=True)
    for name in ("agent.yaml", "registry.yaml", "web.yml"):
        shutil.copy(HERE / "etc" / name, etc / name)
    doc = root / "usr/share/doc/dutywatch"
    doc.mkdir(parents=True)
    shutil.copy(REPO / "README.md", doc / "README.md")
    (doc / "copyright").write_text(copyright_text(venv))
    man = root / "usr/share/man/man1"
    man.mkdir(parents=True)
    (man / "dutywatch.1.gz").write_bytes(gzip.compress((HERE / "dutywatch.1").read_bytes(), 9, mtime=0))
    for p in root.rglob("*"):  # reproducible modes whatever the builder's umask
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() or os.access(p, os.X_OK) else 0o644)
    return root


def bundled(venv: Path) -> list[tuple[str, str, str, Path]]:
    """(name, version, SPDX licence, dist-info) of every distribution in the environment but DutyWatch."""
    site = venv / "lib" / PYVER / "site-packages"
    out = []
    for info in sorted(site.glob("*.dist-info"), key=lambda p: p.name.lower()):
        meta = email.parser.Parser().parsestr((info / "METADATA").read_text(errors="replace"), headersonly=True)
        name, ver = meta.get("Name", info.name), meta.get("Version", "")
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key == "dutywatch":
            continue
        if key not in BUNDLED_LICENCES:
            raise SystemExit(f"bundled distribution {name} {ver} has no licence in BUNDLED_LICENCES "
                             f"(its metadata says {meta.get('License-Expression') or _licence_from(meta)!r}): "
                             "check it is compatible with GPL-2.0 and add it")
        out.append((name, ver, BUNDLED_LICENCES[key], info))
    return out


def rpm_licence(venv: Path) -> str:
    """The rpm ``License:`` tag: DutyWatch's own licence and every bundled one."""
    parts: list[str] = []
    for expr in [OWN_LICENCE] + [lic for _, _, lic, _ in bundled(venv)]:
        term = f"({expr})" if " " in expr else expr
        if term not in parts:
            parts.append(term)
    return " AND ".join(parts)


def copyright_text(venv: Path) -> str:
    """The copyright file: DutyWatch's own stanza, then one per bundled distribution."""
    text = (HERE / "deb" / "copyright").read_text().rstrip("\n") + "\n"
    for name, ver, licence, info in bundled(venv):
        texts = sorted(str(p.relative_to(venv.parent.parent.parent)) for p in info.rglob("*")
                       if p.is_file() and p.name.upper().startswith(("LICENSE", "LICENCE", "COPYING")))
        text += (f"\nFiles: {PREFIX[1:]}/lib/{PYVER}/site-packages/* (distribution {name} {ver})\n"
                 f"Copyright: the {name} authors\nLicense: {licence}\n")
        text += "".join(f" Full text: /{t}\n" for t in texts) or " See the distribution's metadata.\n"
    return text


def deb(work: Path, out: Path, staged: Path | None = None) -> Path:
    """``dist/dutywatch_<version>_<arch>.deb`` (from ``staged`` when already staged)."""
    root = work / "deb-root"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(staged or stage(work), root, symlinks=True)
    ver = version()
    changelog = (HERE / "deb" / "changelog").read_text()
    first = changelog.split("\n", 1)[0]
    if f"({ver})" not in first:
        raise SystemExit(f"packaging/deb/changelog starts with {first!r}; add an entry for version {ver}")
    (root / "lib/systemd/system").mkdir(parents=True)
    shutil.copy(HERE / "systemd" / "dutywatch.service", root / "lib/systemd/system/dutywatch.service")
    doc = root / "usr/share/doc/dutywatch"
    (doc / "changelog.gz").write_bytes(gzip.compress(changelog.encode(), 9, mtime=0))
    overrides = root / "usr/share/lintian/overrides"
    overrides.mkdir(parents=True)
    shutil.copy(HERE / "deb" / "lintian-overrides", overrides / "dutywatch")
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    size_kb = sum(p.lstat().st_size for p in root.rglob("*")) // 1024 + 1
    control = root / "DEBIAN"
    control.mkdir()
    (control / "control").write_text((HERE / "deb" / "control").read_text()
                                     .replace("@VERSION@", ver).replace("@ARCH@", arch)
                                     .replace("@SIZE@", str(size_kb))
                                     .replace("@GLIBC@", glibc_needed(root)))
    (control / "conffiles").write_text((HERE / "deb" / "conffiles").read_text())
    for script in ("postinst", "prerm", "postrm"):
        shutil.copy(HERE / "deb" / script, control / script)
        (control / script).chmod(0o755)
    sums = [f"{_md5(p)}  {p.relative_to(root)}" for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and control not in p.parents
            and str(p.relative_to(root)) not in CONFFILES]
    (control / "md5sums").write_text("\n".join(sums) + "\n")
    (control / "md5sums").chmod(0o644)
    (control / "conffiles").chmod(0o644)
    (control / "control").chmod(0o644)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"dutywatch_{ver}_{arch}.deb"
    run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, target)
    return target


def glibc_needed(root: Path) -> str:
    """The newest GLIBC symbol version any shipped shared object asks for (e.g. ``2.28``)."""
    best = 17
    for so in root.rglob("*.so*"):
        if so.is_file() and not so.is_symlink():
            for m in re.finditer(rb"GLIBC_2\.(\d+)(?:\.\d+)?\x00", so.read_bytes()):
                best = max(best, int(m.group(1)))
    return f"2.{best}"


def _md5(path: Path) -> str:
    import hashlib
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def rpm(work: Path, out: Path, staged: Path | None = None) -> Path:
    """``dist/dutywatch-<version>-1.<arch>.rpm``, built by rpmbuild from the same tree."""
    root = staged or stage(work)
    top = work / "rpmbuild"
    shutil.rmtree(top, ignore_errors=True)
    run("rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {top}", "--define", f"stagedir {root}",
        "--define", f"unitfile {HERE / 'systemd' / 'dutywatch.service'}", "--define", f"dwversion {version()}",
        "--define", f"dwlicense {rpm_licence(root / PREFIX.lstrip('/'))}",
        HERE / "rpm" / "dutywatch.spec")
    built = sorted((top / "RPMS").rglob("dutywatch-*.rpm"))
    if not built:
        raise SystemExit("rpmbuild wrote no package")
    out.mkdir(parents=True, exist_ok=True)
    target = out / built[-1].name
    shutil.copy(built[-1], target)
    print(target)
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line: ``build.py {stage,deb,rpm,all} [--work DIR] [--out DIR]``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("what", choices=("stage", "deb", "rpm", "all"))
    ap.add_argument("--work", type=Path, default=REPO / "build" / "package")
    ap.add_argument("--out", type=Path, default=REPO / "dist")
    args = ap.parse_args(argv)
    work = args.work.resolve()
    if args.what == "stage":
        print(stage(work))
    elif args.what == "deb":
        print(deb(work, args.out.resolve()))
    elif args.what == "rpm":
        rpm(work, args.out.resolve())
    else:
        staged = stage(work)
        print(deb(work, args.out.resolve(), staged))
        rpm(work, args.out.resolve(), staged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
