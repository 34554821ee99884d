"""``dutywatch test-rules``: run rule samples; the last line is ``N passed, N failed``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.commands.common import add_config, error_lines, print_errors
from agent.config import load_config
from agent.engine.rules import load_rules
from agent.engine.samples import run_samples
from agent.errors import LoadError, LoadErrors
from agent.paths import shipped_rules_dir, shipped_samples_dir


def register(sub: Any) -> None:
    """Add the command."""
    p = sub.add_parser("test-rules", help="run rule samples (the shipped ones by default)")
    add_config(p)
    p.add_argument("--rules", action="append", type=Path, metavar="PATH",
                   help="a rule file or directory to load (repeat for several; default: the shipped packs)")
    p.add_argument("-v", "--verbose", action="store_true", help="list passing samples too")
    p.add_argument("files", nargs="*", type=Path, metavar="FILE", help="sample files or directories")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every sample passes (and, for shipped samples, every rule is covered)."""
    shipped = shipped_rules_dir()
    skip = False
    try:
        if args.rules:
            paths: list[Path] = list(args.rules)
            optional: tuple[Path, ...] = ()
        elif args.config is not None:
            cfg = load_config(args.config)
            paths, optional = list(cfg.rules), cfg.rules_optional
            skip = cfg.sigma_skip_unsupported
        else:
            paths, optional = [shipped], ()
        ruleset = load_rules(paths, optional=optional, sigma_skip_unsupported=skip)
    except (LoadError, LoadErrors) as exc:
        print_errors(error_lines(exc))
        print("0 passed, 1 failed")
        return 1
    files = list(args.files) or [shipped_samples_dir()]
    coverage: list[str] = []
    if not args.files:
        coverage = [r.id for r in ruleset.rules if Path(r.source).resolve().parent == shipped.resolve()]
    report = run_samples(ruleset, files, coverage)
    for o in report.outcomes:
        if not o.ok:
            print(f"FAIL {o.where}: {o.name}: {o.detail}")
        elif args.verbose:
            print(f"ok   {o.where}: {o.name}")
    print(report.summary())
    return 0 if report.failed == 0 else 1
