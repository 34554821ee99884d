"""The policy in force on this host, and how a new bundle is judged before it replaces it.

State lives in ``STATE_DIR/policy/``:

- ``current.json``: the bundle in force, exactly as received; verified again
  at every load, so an edit on disk fails the load instead of changing policy;
- ``highest``: the highest version ever accepted (no rollback, even when
  ``current.json`` is removed);
- ``active/``: the bundle's files, written anew from ``current.json`` at every
  load (``rules/``, ``assess/``, ``agent.d/``, and ``registry.yaml``: this
  host's entry of the central registry);
- ``refused/``: bundles that were refused, named by their SHA-256, each with
  a ``.reason`` file.

The config takes the policy in force as an overlay: its drop-ins merge after
the host's own ``agent.d`` (they may not set ``policy`` or ``state_dir``), its
rule packs and assessment policies load beside the configured ones, and its
registry entry replaces the host's registry file.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.config import Config
from agent.crypto.suite import PublicKey
from agent.errors import LoadError, LoadErrors, Location
from agent.policy import central
from agent.policy.bundle import PolicyError, Verified, verify
from agent.textsafe import write_new

CURRENT = "current.json"
HIGHEST = "highest"
ACTIVE = "active"


@dataclass(frozen=True, slots=True)
class Overlay:
    """Where the files of the policy in force are, for the config to take them."""

    verified: Verified
    root: Path
    rules: Path | None
    assess: Path | None
    dropins: tuple[Path, ...]
    registry: Path | None


@dataclass(frozen=True, slots=True)
class Decision:
    """What became of an offered bundle."""

    accepted: bool
    reason: str  # applied | same | signature | scope | version | content
    detail: str
    verified: Verified | None = field(default=None, repr=False)


def policy_dir(config: Config) -> Path:
    """``STATE_DIR/policy``."""
    return config.state_dir / "policy"


def load_roots(config: Config) -> list[PublicKey]:
    """The trusted root keys named by ``policy.keys``; LoadError names a bad one."""
    from agent.crypto.suite import SuiteError, load_public_pem

    roots = []
    for p in config.policy.keys:
        try:
            roots.append(load_public_pem(p.read_bytes()))
        except OSError as exc:
            raise LoadError(Location(str(p)), f"cannot read the policy root key: {exc.strerror}") from exc
        except SuiteError as exc:
            raise LoadError(Location(str(p)), f"not a public key: {exc}") from exc
    return roots


def highest(config: Config) -> int:
    """The highest policy version this host ever accepted (0: none)."""
    try:
        return int((policy_dir(config) / HIGHEST).read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError as exc:
        raise LoadError(Location(str(policy_dir(config) / HIGHEST)), "not a version number") from exc


def host_id(config: Config) -> str:
    """Which entry of a central registry is this host's: ``policy.host``, else the registry's host id."""
    if config.policy.host:
        return config.policy.host
    from agent.registry import load_registry
    try:
        reg = load_registry(config.registry)
    except (LoadError, LoadErrors, OSError):
        return socket.gethostname()
    return reg.host.id if reg.host.id and not reg.example else socket.gethostname()


def materialize(v: Verified, dest: Path, host: str) -> Overlay:
    """Write the bundle's files under ``dest`` (replacing what was there) and say where they are."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o755, parents=True)
    registry = None
    for f in v.files:
        if f.role == "registry":
            found = central.host_registry(f.text, f"{f.path} (policy version {v.version})", host)
            if found is None:
                raise PolicyError("scope", f"the central registry of policy version {v.version} has no entry "
                                           f"for host {host!r}")
            text = found[0]
            registry = dest / "registry.yaml"
        else:
            text = f.text
        target = tmp / f.path
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    dropins = tuple(sorted((dest / "agent.d").glob("*.yaml"))) if (dest / "agent.d").is_dir() else ()
    return Overlay(v, dest, dest / "rules" if v.role("rules") else None,
                   dest / "assess" if v.role("assess") else None, dropins, registry)


def apply(config_path: Path, config: Config, overlay: Overlay) -> Config:
    """The config with the policy's drop-ins, rules, assessment policies and registry taken in."""
    from agent.assess.policy import policy_entries
    from agent.config import load_config

    merged = load_config(config_path, extra_dropins=overlay.dropins)
    merged = replace(merged, state_dir=config.state_dir)
    rules = merged.rules + ((overlay.rules,) if overlay.rules else ())
    assess = merged.assess
    if overlay.assess is not None:
        entries, optional = policy_entries(assess.policies)
        kept = tuple(p for p in entries if p not in optional or p.exists())
        assess = replace(assess, policies=(*kept, overlay.assess))
    return replace(merged, rules=rules, assess=assess, registry=overlay.registry or merged.registry)


def in_force(config_path: Path, config: Config) -> tuple[Config, Overlay | None]:
    """The config with the policy in force applied (verified again), or unchanged when there is none."""
    if not config.policy.keys:
        return config, None
    cur = policy_dir(config) / CURRENT
    try:
        data = cur.read_bytes()
    except FileNotFoundError:
        return config, None
    except OSError as exc:
        raise LoadError(Location(str(cur)), f"cannot read the policy in force: {exc.strerror}") from exc
    try:
        v = verify(data, load_roots(config))
        top = highest(config)
        if v.version < top:
            raise PolicyError("version", f"version {v.version} is older than version {top}, accepted before")
        # Which host this is (its local registry read) matters only to a bundle with a central registry.
        host = host_id(config) if any(f.role == "registry" for f in v.files) else ""
        overlay = materialize(v, policy_dir(config) / ACTIVE, host)
    except PolicyError as exc:
        raise LoadError(Location(str(cur)), f"the policy in force does not hold ({exc}); move the file aside to "
                                            "run on the local config until the next bundle arrives") from exc
    return apply(config_path, config, overlay), overlay


class Judge:
    """Decides whether an offered bundle replaces the policy in force.

    ``trial`` loads a config (with rules, registry, assessment policies) and
    raises LoadError(s) when anything in it is bad: a bundle is accepted only
    if the whole config it makes would load.
    """

    def __init__(self, config_path: Path, config: Config, current_unit: Callable[[], str | None],
                 trial: Callable[[Config], None]) -> None:
        self.config_path = config_path
        self.config = config
        self.current_unit = current_unit
        self.trial = trial

    def current_digest(self) -> str | None:
        import hashlib
        try:
            return hashlib.sha256((policy_dir(self.config) / CURRENT).read_bytes()).hexdigest()
        except OSError:
            return None

    def offer(self, data: bytes) -> Decision:
        """Judge one bundle; on acceptance it becomes ``current.json`` (the caller then reloads)."""
        try:
            v = verify(data, load_roots(self.config))
        except PolicyError as exc:
            return Decision(False, exc.reason, exc.detail)
        except LoadError as exc:
            return Decision(False, "signature", str(exc))
        if v.digest == self.current_digest():
            return Decision(False, "same", f"policy version {v.version} is already in force", v)
        top = highest(self.config)
        if v.version <= top:
            return Decision(False, "version", f"version {v.version} is not newer than version {top}, accepted "
                                              "before (policy never goes back)", v)
        host = host_id(self.config)
        unit = self.current_unit()
        trial_dir = policy_dir(self.config) / ".trial"
        try:
            overlay = materialize(v, trial_dir, host)
            new_unit = None
            if overlay.registry is not None:
                from agent.registry import load_registry
                new_unit = load_registry(overlay.registry).host.unit
            # A unit key answers only for hosts already in its units, and may not move one into them;
            # a root key may place a host anywhere its bundle's scope covers.
            covered = v.covers(unit) and (new_unit is None or v.covers(new_unit))
            if v.signer_units is None and not covered:
                covered = v.covers(new_unit if new_unit is not None else unit)
            if not covered:
                where = unit or "no unit"
                return Decision(False, "scope", f"this host ({host}, unit {where}"
                                + (f", to become {new_unit}" if new_unit and new_unit != unit else "")
                                + f") is not in the scope of policy version {v.version} ({', '.join(v.scope)}) "
                                f"signed by {v.signer}", v)
            self.trial(apply(self.config_path, self.config, overlay))
        except PolicyError as exc:
            return Decision(False, exc.reason, exc.detail, v)
        except (LoadError, LoadErrors) as exc:
            lines = str(exc).splitlines()
            more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
            return Decision(False, "content", "; ".join(lines[:3]) + more, v)
        finally:
            shutil.rmtree(trial_dir, ignore_errors=True)
        self._commit(v)
        return Decision(True, "applied", f"policy version {v.version} signed by {v.signer}", v)

    def _commit(self, v: Verified) -> None:
        d = policy_dir(self.config)
        d.mkdir(mode=0o750, parents=True, exist_ok=True)
        write_new(d / CURRENT, lambda f: f.write(v.raw), binary=True)
        write_new(d / HIGHEST, lambda f: f.write(f"{v.version}\n"), binary=False)
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def set_aside(self, data: bytes, decision: Decision) -> Path:
        """Keep a refused bundle (by its SHA-256) with its reason, for the officer to look at."""
        import hashlib
        d = policy_dir(self.config) / "refused"
        d.mkdir(mode=0o750, parents=True, exist_ok=True)
        name = hashlib.sha256(data).hexdigest()
        p = d / f"{name}.json"
        if not p.exists():
            p.write_bytes(data)
            (d / f"{name}.reason").write_text(f"{decision.reason}: {decision.detail}\n", encoding="utf-8")
        return p
