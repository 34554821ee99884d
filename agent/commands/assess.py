"""``dutywatch assess``: the configuration assessment of the live host or a mounted root."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.commands.common import error_lines, print_errors
from agent.errors import LoadError, LoadErrors


def register(sub: Any) -> None:
    """Add the command."""
    p = sub.add_parser("assess", help="assess the host's configuration against the level-3 policy")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="a mounted root file system to assess (nothing in it is run; default: this host)")
    p.add_argument("--policy", type=Path, nargs="+", default=None, metavar="PATH",
                   help="policy files or directories (default: the shipped policy, then /etc/dutywatch/assess.d)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--lang", choices=("zh", "en"), default="en")
    p.add_argument("--inventory", action="store_true",
                   help="with --format json: add the host's inventory (packages, accounts, services, modules, "
                        "listening sockets, USB storage history)")
    p.add_argument("--low-priority", action="store_true",
                   help="run at nice 10 in the idle I/O class (as the agent runs it)")
    p.add_argument("--test", nargs="*", type=Path, default=None, metavar="FILE",
                   help="run the policy's samples (default: the shipped ones) instead of assessing")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="limit of each command a check runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when no check fails, 1 when one does, 2 when the policy does not load."""
    from agent.assess.evaluate import run_policies
    from agent.assess.policy import load_policies, policy_entries, shipped_policy_dir

    if args.low_priority:
        from agent.daemon.assessor import low_priority
        low_priority()
    entries, optional = policy_entries(tuple(args.policy) if args.policy else None)
    if not Path(args.root).is_dir():
        print(f"dutywatch: --root {args.root}: not a directory", file=sys.stderr)
        return 2
    try:
        policies = load_policies(entries, optional)
    except (LoadError, LoadErrors) as exc:
        print_errors(error_lines(exc))
        return 2
    if args.test is not None:
        return _samples(policies, args.test or sorted((shipped_policy_dir() / "tests").glob("*.yaml")))
    res = run_policies(policies, args.root, args.timeout)
    if args.format == "json":
        doc: dict[str, Any] = {
               "root": res.root, "family": res.family, "time": res.started, "seconds": round(res.seconds, 3),
               "policies": policies.names, "results": [r.to_dict() for r in res.results],
               "not_provable": [{"item": u.item, "clause": u.clause, "reason": {"zh": u.reason.zh, "en": u.reason.en}}
                                for u in policies.unprovable],
               "read_paths": list(res.read_paths)}
        if args.inventory:
            from agent.assess.inventory import snapshot
            from agent.assess.rootfs import RootFS
            doc["inventory"] = snapshot(RootFS(args.root))
        json.dump(doc, sys.stdout, ensure_ascii=False, indent=1)
        print()
    else:
        _table(res.results, args.lang)
        counts: dict[str, int] = {}
        for r in res.results:
            counts[r.result] = counts.get(r.result, 0) + 1
        print(f"{counts.get('pass', 0)} pass, {counts.get('fail', 0)} fail, "
              f"{counts.get('not_applicable', 0)} not applicable ({res.family or 'unknown'} system at {res.root}, "
              f"{res.seconds:.2f} s)")
    return 1 if any(r.result == "fail" for r in res.results) else 0


def _table(results: Any, lang: str) -> None:
    mark = {"pass": "PASS", "fail": "FAIL", "not_applicable": "N/A"}
    for r in results:
        title = r.title_zh if lang == "zh" else r.title_en
        print(f"{mark[r.result]:<5} {r.check:<16} {','.join(i[-2:] for i in r.items):<8} {title}")
        for e in r.evidence[:4]:
            print(f"{'':<6}{e}")


def _samples(policies: Any, files: list[Path]) -> int:
    from agent.assess.samples import run_samples
    try:
        rep = run_samples(policies, files)
    except (LoadError, LoadErrors) as exc:
        print_errors(error_lines(exc))
        return 2
    for line in rep.failed:
        print(line)
    print(f"{rep.passed} passed, {len(rep.failed)} failed")
    return 1 if rep.failed else 0
