"""The systemd unit: Type=notify with a watchdog, exactly the collectors' capabilities, a sandbox that
does not blind the agent, and an exposure score printed next to Debian's own daemons'."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "systemd" / "dutywatch.service"
CACHE = Path("/var/cache/dutywatch-test")
CAPS = {"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_NET_RAW", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_AUDIT_CONTROL",
        "CAP_AUDIT_READ"}
FAMILIES = {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}
# The bound. The audit source's two capabilities (CAP_AUDIT_CONTROL, CAP_AUDIT_READ) add 0.1;
# IPAddressDeny=any with IPAddressAllow=localhost takes 0.1 back; setrlimit (@resources) for the workers
# would add 0.1 again, so they do without it.
MAX_EXPOSURE = 3.2


def service_section(path: Path) -> dict[str, list[str]]:
    """[Service] keys with every value in order (systemd allows a key more than once)."""
    out: dict[str, list[str]] = defaultdict(list)
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            out[key.strip()].append(value.strip())
    return out


def exposure(unit: Path) -> float:
    """`systemd-analyze security --offline=true` overall exposure of a unit file."""
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout + res.stderr)
    assert m, f"no score from systemd-analyze: {res.stdout[-500:]} {res.stderr[-500:]}"
    return float(m.group(1))


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    """The packaged unit's [Service] section."""
    return service_section(UNIT)


def test_exposure_score_at_most_3_2() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    score = exposure(UNIT)
    print(f"\nexposure dutywatch.service: {score}")
    assert score <= MAX_EXPOSURE


def _debian_unit(package: str, name: str, into: Path) -> Path | None:
    """The unit file shipped by a Debian package, downloaded (cached) and unpacked, not installed."""
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        res = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True, timeout=120)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            print(f"apt-get download {package}: {res.stderr.strip()[-300:]}")
            return None
    subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(into)], check=True, timeout=60)
    units = [p for p in into.rglob(name) if p.is_file()]
    return units[0] if units else None


def test_exposure_compared_with_debian_daemons(tmp_path: Path) -> None:
    ours = exposure(UNIT)
    lines = [f"dutywatch.service                 {ours:.1f}"]
    for package, name in (("prometheus-node-exporter", "prometheus-node-exporter.service"),
                          ("auditd", "auditd.service")):
        unit = _debian_unit(package, name, tmp_path / package)
        if unit is None:
            pytest.skip(f"could not fetch {package} from the Debian archive to compare with")
        lines.append(f"{name:<33} {exposure(unit):.1f}")
    print("\nsystemd-analyze security --offline=true (lower is better):\n  " + "\n  ".join(lines))


def test_unit_has_no_unknown_or_misspelt_settings(tmp_path: Path) -> None:
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(UNIT)], capture_output=True, text=True,
                         timeout=60)
    # /usr/bin/dutywatch exists only once the package is installed; anything else is a real problem.
    problems = [line for line in (res.stdout + res.stderr).splitlines()
                if line.strip() and "/usr/bin/dutywatch is not executable" not in line]
    assert problems == []


def test_notify_with_watchdog_and_room_for_a_clean_stop(service: dict[str, list[str]]) -> None:
    assert service["Type"] == ["notify"]
    assert service["ExecStart"][0].startswith("/usr/bin/dutywatch run --config /etc/dutywatch/agent.yaml")
    watchdog = int(service["WatchdogSec"][0].rstrip("s"))
    assert watchdog >= 20  # the agent pings every WatchdogSec/2 from a loop that also reloads rules
    # shutdown() waits up to 5 s for the collectors and 60 s for the queue to drain, then signs.
    assert int(service["TimeoutStopSec"][0].rstrip("s")) > 65
    # `systemctl reload` waits for the agent's answer and fails when the new set is rejected.
    assert service["ExecReload"] == ["/usr/bin/dutywatch reload --config /etc/dutywatch/agent.yaml --pid $MAINPID"]


def test_dedicated_user_and_private_state(service: dict[str, list[str]]) -> None:
    assert service["User"] == ["dutywatch"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["StateDirectory"] == ["dutywatch"]
    assert service["StateDirectoryMode"] == ["0700"]  # the journal refuses anything wider
    assert service["UMask"] == ["0077"]


def test_exactly_the_capabilities_the_collectors_use(service: dict[str, list[str]]) -> None:
    ambient = set(" ".join(service["AmbientCapabilities"]).split())
    bounding = set(" ".join(service["CapabilityBoundingSet"]).split())
    assert ambient == bounding == CAPS
    # Every capability a collector asks for is granted...
    sources = "\n".join(p.read_text() for p in (REPO / "collectors").glob("*.py"))
    asked = set(re.findall(r"\bCAP_[A-Z_]+", sources))
    assert asked - ambient == set()
    # ...and every one granted is accounted for in the unit, by the collector that uses it.
    header = [line for line in UNIT.read_text().splitlines() if line.startswith("#")]
    for cap in ambient:
        why = [line for line in header if re.match(rf"#\s+{cap}\s+(process|files|network|media|host|audit)\b", line)]
        assert why, f"{cap} is granted without the collector that needs it"


def test_address_families(service: dict[str, list[str]]) -> None:
    assert set(" ".join(service["RestrictAddressFamilies"]).split()) == FAMILIES


def _resolve(group: str, seen: set[str] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    if not group.startswith("@"):
        return {group}
    if group in seen:
        return set()
    seen.add(group)
    text = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", group], capture_output=True,
                          text=True, check=True, timeout=30).stdout
    names: set[str] = set()
    for line in text.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            names |= _resolve(word, seen)
    return names


def test_system_call_filter_keeps_what_the_collectors_call(service: dict[str, list[str]]) -> None:
    allowed: set[str] = set()
    for i, entry in enumerate(service["SystemCallFilter"]):
        deny = entry.startswith("~")
        names = set().union(*(_resolve(w) for w in entry.lstrip("~").split()))
        assert i > 0 or not deny, "the first SystemCallFilter must be an allow list"
        allowed = allowed - names if deny else allowed | names
    needed = {"fanotify_init", "fanotify_mark", "name_to_handle_at",  # files
              "socket", "bind", "setsockopt", "recvfrom", "recvmsg", "sendto",  # netlink, AF_PACKET
              "inotify_init1", "inotify_add_watch", "poll", "readlinkat", "pread64", "clone3",
              "sendmsg", "prctl",  # the workers: descriptors, confinement
              "prlimit64"}  # glibc's setrlimit(): the workers lower their own limits (@default allows it)
    assert needed - allowed == set()
    assert {"mount", "reboot", "init_module", "ptrace", "setuid", "bpf"} & allowed == set()
    # The old setrlimit call stays refused with the rest of @resources (the exposure score counts the group).
    assert "setrlimit" not in allowed


def test_sandbox_that_would_blind_the_agent_is_absent(service: dict[str, list[str]]) -> None:
    assert service.get("ProtectProc", ["default"]) == ["default"]  # invisible hides other users' processes
    assert service.get("ProcSubset", ["all"]) == ["all"]
    for key in ("PrivateUsers", "PrivateNetwork", "PrivateTmp", "PrivateDevices"):
        assert service.get(key, ["no"]) == ["no"], key
