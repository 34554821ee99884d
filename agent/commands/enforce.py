"""``dutywatch enforce list|lift ID|release``: what is enforced on this host, and taking it back.

``lift`` asks the running agent, which lifts and journals who asked; with no
agent running (stopped with ``on_stop: keep``, or died), the command lifts
itself and journals it. ``release`` removes every enforcement and the agent's
nftables table (the package's removal runs it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from agent.commands.common import add_config, config_path, error_lines, print_errors
from agent.errors import LoadError, LoadErrors


def register(sub: Any) -> None:
    """Add the command."""
    p = sub.add_parser("enforce", help="list or lift enforcements (network blocks, read-only sticks)")
    esub = p.add_subparsers(dest="enforce_command", metavar="ACTION")
    ls = esub.add_parser("list", help="enforcements in force, with who can lift them")
    add_config(ls)
    ls.add_argument("--state-dir", type=Path, default=None, help="override the config's state_dir")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    ls.set_defaults(func=run_list)
    lf = esub.add_parser("lift", help="lift one enforcement (ID from enforce list), or all")
    add_config(lf)
    lf.add_argument("--state-dir", type=Path, default=None, help="override the config's state_dir")
    lf.add_argument("id", help="the enforcement's id, or 'all'")
    lf.add_argument("--reason", default="", help="why (journaled)")
    lf.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the agent (default 15)")
    lf.set_defaults(func=run_lift)
    rl = esub.add_parser("release", help="remove every enforcement and the agent's nftables table")
    add_config(rl)
    rl.add_argument("--state-dir", type=Path, default=None, help="override the config's state_dir")
    rl.set_defaults(func=run_release)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _config(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from agent.strictmodes import load_checked_config
    cfg = load_checked_config(config_path(args))
    if getattr(args, "state_dir", None) is not None:
        cfg = replace(cfg, state_dir=args.state_dir)
    return cfg


def _iso(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "while the agent runs"


def run_list(args: argparse.Namespace) -> int:
    """Print the enforcements in force."""
    from agent.enforce.state import alive, load
    try:
        cfg = _config(args)
    except (LoadError, LoadErrors) as exc:
        print_errors(error_lines(exc))
        return 1
    saved = load(cfg.state_dir)
    items = saved.enforcements if saved is not None else []
    running = saved is not None and alive(saved.pid)
    if args.format == "json":
        for e in items:
            print(json.dumps({**e.as_dict(), "agent_running": running,
                              "lift": f"dutywatch enforce lift {e.id}"}, ensure_ascii=False))
        return 0
    print(f"enforcement mode {cfg.enforce.mode}; table inet {cfg.enforce.table}; "
          f"{f'agent running (pid {saved.pid})' if saved and running else 'no agent holds these'}")
    if not items:
        print("nothing enforced")
        return 0
    print(f"{'ID':<18} {'KIND':<8} {'MODE':<7} {'TARGET':<28} {'RULE':<14} {'OPERATOR':<10} UNTIL")
    for e in items:
        print(f"{e.id:<18} {e.kind:<8} {e.mode:<7} {e.target:<28} {e.rule:<14} {e.operator or '-'!s:<10} "
              f"{_iso(e.until)}")
    print("lift one with: dutywatch enforce lift ID (root on this host)")
    return 0


def run_lift(args: argparse.Namespace) -> int:
    """Ask the agent to lift, or lift here when no agent runs."""
    from agent.enforce.state import alive, load, request_lift
    try:
        cfg = _config(args)
    except (LoadError, LoadErrors) as exc:
        print_errors(error_lines(exc))
        return 1
    saved = load(cfg.state_dir)
    ids = [e.id for e in saved.enforcements] if saved is not None else []
    if args.id != "all" and args.id not in ids:
        print(f"dutywatch: no enforcement {args.id} in force (see dutywatch enforce list)")
        return 1
    if not ids:
        print("nothing enforced")
        return 0
    assert saved is not None
    if alive(saved.pid):
        request_lift(cfg.state_dir, args.id, args.reason)
        deadline = time.monotonic() + args.wait
        while time.monotonic() < deadline:
            now = load(cfg.state_dir)
            left = [e.id for e in now.enforcements] if now is not None else []
            if (args.id == "all" and not left) or (args.id != "all" and args.id not in left):
                print(f"lifted {args.id} (journaled by the agent, pid {saved.pid})")
                return 0
            time.sleep(0.1)
        print(f"dutywatch: the agent (pid {saved.pid}) did not lift {args.id} within {args.wait:g} s")
        return 1
    return _lift_here(cfg, saved, None if args.id == "all" else args.id, "command", args.reason)


def run_release(args: argparse.Namespace) -> int:
    """Remove every enforcement and the table, whether or not an agent runs."""
    from agent.enforce.nft import NftError, NftTable
    from agent.enforce.state import STATE_FILE, load
    try:
        cfg = _config(args)
    except (LoadError, LoadErrors) as exc:
        print_errors(error_lines(exc))
        return 1
    saved = load(cfg.state_dir)
    rc = 0
    if saved is not None and saved.enforcements:
        rc = _lift_here(cfg, saved, None, "release", "")
    for name in {cfg.enforce.table, *((saved.table,) if saved else ())}:
        try:
            if NftTable(name).remove():
                print(f"removed nftables table inet {name}")
        except NftError as exc:
            print(f"dutywatch: cannot remove table inet {name}: {exc}")
            rc = 1
    (cfg.state_dir / STATE_FILE).unlink(missing_ok=True)
    return rc


def _lift_here(cfg: Any, saved: Any, ident: str | None, how: str, reason: str) -> int:
    """Lift without an agent: the kernel state first, then the journal record."""
    import ipaddress
    import os

    from agent.enforce.channel import ANY4, ANY6
    from agent.enforce.media import MediaGuard
    from agent.enforce.nft import Elements, NftError, NftTable
    from agent.enforce.state import Saved, requester, save
    from agent.journal.store import Journal
    from agent.registry import load_registry

    now = time.time()
    lifted = [e for e in saved.enforcements if ident is None or e.id == ident]
    kept = [e for e in saved.enforcements if e not in lifted]
    rc = 0
    table = NftTable(saved.table)
    if any(e.mode == "enforce" and e.kind in ("network", "isolate") for e in lifted):
        try:
            elements = Elements()
            for e in kept:
                if e.mode != "enforce" or e.kind not in ("network", "isolate"):
                    continue
                left = (e.until - now) if e.until is not None else 1.0
                for n in e.nets:
                    net = ipaddress.ip_network(n)
                    name = "iso" if e.kind == "isolate" else "dest"
                    if e.target.startswith("zone:"):
                        name = "wide" if net in (ANY4, ANY6) else "zone"
                    elements.add(name, net, max(left, 1.0))
            if any(elements.sets.values()):
                table.apply(elements)
            else:
                table.remove()
        except NftError as exc:
            print(f"dutywatch: nftables: {exc}")
            rc = 1
    guard = MediaGuard()
    for e in lifted:
        if e.mode == "enforce" and e.kind == "media":
            try:
                guard.release(e.target, e.detail)
            except OSError as exc:
                print(f"dutywatch: {e.target}: {exc}")
                rc = 1
    save(cfg.state_dir, Saved(saved.pid, saved.table, now, kept))
    try:
        host = load_registry(cfg.registry).host.id or os.uname().nodename
    except (LoadError, LoadErrors):
        host = os.uname().nodename
    journal = Journal.from_settings(cfg.state_dir, cfg.journal, host=host)
    try:
        by = requester()
        for e in lifted:
            journal.append({"type": "lifecycle", "time": now, "host": host, "kind": "enforce.lift",
                            "detail": {"id": e.id, "kind": e.kind, "target": e.target, "mode": e.mode,
                                       "rule": e.rule, "how": how, "result": "lifted", "since": e.since,
                                       "until": e.until, "by": by, "reason": reason,
                                       "message": f"{e.kind} {e.target} ({e.id}): lifted by {how} with no agent "
                                                  "running"}})
            print(f"lifted {e.id} ({e.kind} {e.target})")
    finally:
        journal.close()
    return rc
