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
# The Debian releases a package is built for, and the interpreter each one's package runs on.
SUITES = {"bookworm": "python3.11", "trixie": "python3.13"}
PYVER = SUITES["bookworm"]
# Wheels for another suite's interpreter are fetched for these platforms (glibc 2.36 and later).
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64",
             "manylinux_2_34_x86_64", "any")
# The licence (SPDX) of every distribution the packages bundle, checked against its metadata by
# the packaging tests. A dependency that is not listed stops the build: its licence must be
# known to be compatible with DutyWatch's GPL-2.0-or-later first.
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


def build_wheels(work: Path, pyver: str = PYVER) -> Path:
    """Wheels of DutyWatch and every runtime dependency, for the target's Python."""
    wheels = work / f"wheels-{pyver}"
    shutil.rmtree(wheels, ignore_errors=True)
    if pyver == f"python{sys.version_info.major}.{sys.version_info.minor}":
        run(sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", wheels, REPO)
        return wheels
    # Another interpreter: DutyWatch's own wheel (pure Python), then its dependencies' binary
    # wheels for that interpreter, resolved by pip from the wheel's requirements.
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheels, REPO)
    own = next(wheels.glob("dutywatch-*.whl"))
    run(sys.executable, "-m", "pip", "download", "--quiet", "--dest", wheels, *_cross_options(pyver), own)
    return wheels


def _cross_options(pyver: str) -> list[str]:
    ver = pyver.removeprefix("python")
    tag = "cp" + ver.replace(".", "")
    out = ["--only-binary=:all:", "--python-version", ver, "--implementation", "cp",
           "--abi", tag, "--abi", "abi3", "--abi", "none"]
    for platform in PLATFORMS:
        out += ["--platform", platform]
    return out


def make_venv(root: Path, wheels: Path, pyver: str = PYVER) -> Path:
    """The environment at ``root/opt/dutywatch``, installed from ``wheels`` only."""
    target = f"/usr/bin/{pyver}"
    venv = root / PREFIX.lstrip("/")
    if Path(target).is_file():
        run(target, "-m", "venv", "--without-pip", venv)
        # pip runs from the build interpreter but installs for the environment's (Debian's) Python.
        run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python3", "install", "--quiet", "--no-index",
            "--find-links", wheels, "--no-compile", "--no-warn-script-location", "--disable-pip-version-check",
            "dutywatch")
    else:
        _cross_venv(venv, wheels, pyver)
    tidy(venv, pyver)
    relocate(venv)
    return venv


def _cross_venv(venv: Path, wheels: Path, pyver: str) -> None:
    """A virtual environment for an interpreter the build host lacks (trixie's on bookworm).

    It is what ``python -m venv`` makes, written by hand: the interpreter links, pyvenv.cfg, the
    packages installed by pip for that interpreter, and the console script.
    """
    site = venv / "lib" / pyver / "site-packages"
    (venv / "bin").mkdir(parents=True)
    run(sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", wheels, "--no-compile",
        "--disable-pip-version-check", "--target", site, *_cross_options(pyver), "dutywatch")
    (venv / "bin" / pyver).symlink_to(f"/usr/bin/{pyver}")
    (venv / "bin" / "python3").symlink_to(pyver)
    (venv / "bin" / "python").symlink_to(pyver)
    (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = false\n"
                                     f"version = {pyver.removeprefix('python')}\nexecutable = /usr/bin/{pyver}\n")
    script = venv / "bin" / "dutywatch"
    script.write_text("#!/opt/dutywatch/bin/python3\nimport sys\n\nfrom agent.cli import main\n\n"
                      "if __name__ == \"__main__\":\n    sys.exit(main())\n")
    script.chmod(0o755)
    # pip --target puts scripts and data beside the packages; data goes where a venv keeps it.
    shutil.rmtree(site / "bin", ignore_errors=True)
    if (site / "share").is_dir():
        shutil.move(site / "share", venv / "share")


def tidy(venv: Path, pyver: str = PYVER) -> None:
    """Keep what the agent runs: its own script, stripped extensions, no stray interpreter lines."""
    for f in (venv / "bin").iterdir():
        # Activation scripts and the dependencies' own tools (watchmedo, ...) are not the agent's.
        if f.name != "dutywatch" and not f.name.startswith("python"):
            f.unlink()
    site = venv / "lib" / pyver / "site-packages"
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


def stage(work: Path, suite: str = "bookworm") -> Path:
    """The package tree shared by the deb and the rpm, under ``work/root`` (``work/root-SUITE``)."""
    pyver = SUITES[suite]
    root = work / ("root" if suite == "bookworm" else f"root-{suite}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    venv = make_venv(root, build_wheels(work, pyver), pyver)
    share = root / "usr/share/dutywatch"
    share.parent.mkdir(parents=True)
    # Rules live where agent.paths looks for an OS package, not inside the environment.
    shutil.move(venv / "share" / "dutywatch", share)
    # Anything else there documents tools the package does not ship.
    shutil.rmtree(venv / "share")
    (share / "systemd").mkdir(exist_ok=True)
    shutil.copy(HERE / "systemd" / "enforce.conf", share / "systemd" / "enforce.conf")  # a drop-in, not active
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
    (doc / "copyright").write_text(copyright_text(venv, pyver))
    man = root / "usr/share/man/man1"
    man.mkdir(parents=True)
    (man / "dutywatch.1.gz").write_bytes(gzip.compress((HERE / "dutywatch.1").read_bytes(), 9, mtime=0))
    for p in root.rglob("*"):  # reproducible modes whatever the builder's umask
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() or os.access(p, os.X_OK) else 0o644)
    return root


def bundled(venv: Path, pyver: str = PYVER) -> list[tuple[str, str, str, Path]]:
    """(name, version, SPDX licence, dist-info) of every distribution in the environment but DutyWatch."""
    site = venv / "lib" / pyver / "site-packages"
    out = []
    for info in sorted(site.glob("*.dist-info"), key=lambda p: p.name.lower()):
        meta = email.parser.Parser().parsestr((info / "METADATA").read_text(errors="replace"), headersonly=True)
        name, ver = meta.get("Name", info.name), meta.get("Version", "")
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key == "dutywatch":
            continue
        if key not in BUNDLED_LICENCES:
            raise SystemExit(f"bundled distribution {name} {ver} has no licence in BUNDLED_LICENCES "
                             f"(its metadata says {meta.get('License-Expression') or meta.get('License')!r}): "
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


def copyright_text(venv: Path, pyver: str = PYVER) -> str:
    """The copyright file: DutyWatch's own stanza, then one per bundled distribution."""
    text = (HERE / "deb" / "copyright").read_text().rstrip("\n") + "\n"
    for name, ver, licence, info in bundled(venv, pyver):
        texts = sorted(str(p.relative_to(venv.parent.parent.parent)) for p in info.rglob("*")
                       if p.is_file() and p.name.upper().startswith(("LICENSE", "LICENCE", "COPYING")))
        text += (f"\nFiles: {PREFIX[1:]}/lib/{pyver}/site-packages/* (distribution {name} {ver})\n"
                 f"Copyright: the {name} authors\nLicense: {licence}\n")
        text += "".join(f" Full text: /{t}\n" for t in texts) or " See the distribution's metadata.\n"
    return text


def deb(work: Path, out: Path, staged: Path | None = None, suite: str = "bookworm") -> Path:
    """``dist/dutywatch_<version>_<arch>.deb`` for bookworm, ``..._<version>+deb13_...`` for trixie
    (from ``staged`` when already staged for that suite)."""
    root = work / f"deb-root-{suite}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(staged or stage(work, suite), root, symlinks=True)
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
                                     .replace("@VERSION@", ver + _SUITE_SUFFIX[suite]).replace("@ARCH@", arch)
                                     .replace("@SIZE@", str(size_kb))
                                     .replace("@GLIBC@", glibc_needed(root))
                                     .replace("@PYTHON@", SUITES[suite]))
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
    target = out / f"dutywatch_{ver}{_SUITE_SUFFIX[suite]}_{arch}.deb"
    run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, target)
    return target


# Debian's convention for one source built for several releases: the newer release's build
# sorts after the older one's.
_SUITE_SUFFIX = {"bookworm": "", "trixie": "+deb13"}


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


def rpm(work: Path, out: Path, staged: Path | None = None, release: str = "1") -> Path:
    """``dist/dutywatch-<version>-<release>.<arch>.rpm``, built by rpmbuild from the same tree."""
    root = staged or stage(work)
    top = work / "rpmbuild"
    shutil.rmtree(top, ignore_errors=True)
    run("rpmbuild", "-bb", "--nodeps", "--define", f"_topdir {top}", "--define", f"stagedir {root}",
        "--define", f"unitfile {HERE / 'systemd' / 'dutywatch.service'}", "--define", f"dwversion {version()}",
        "--define", f"dwrelease {release}", "--define", f"dwlicense {rpm_licence(root / PREFIX.lstrip('/'))}",
        HERE / "rpm" / "dutywatch.spec")
    built = sorted((top / "RPMS").rglob(f"dutywatch-*-{release}.*.rpm"))
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
    ap.add_argument("--suite", choices=sorted(SUITES), default="bookworm",
                    help="the Debian release the deb is for (default bookworm)")
    ap.add_argument("--work", type=Path, default=REPO / "build" / "package")
    ap.add_argument("--out", type=Path, default=REPO / "dist")
    args = ap.parse_args(argv)
    work = args.work.resolve()
    if args.what == "stage":
        print(stage(work))
    elif args.what == "deb":
        print(deb(work, args.out.resolve(), suite=args.suite))
    elif args.what == "rpm":
        rpm(work, args.out.resolve())
    else:
        staged = stage(work)
        print(deb(work, args.out.resolve(), staged))
        rpm(work, args.out.resolve(), staged)
    return 0


if __name__ == "__main__":
    sys.exit(main())
