"""``dutywatch report``: the auditor report of a period, from the journal or from evidence bundles."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.commands.common import add_period_options, period_of, positive_int

FORMATS = ("html", "pdf", "csv", "json")


def register(sub: Any) -> None:
    """Add the ``report`` command."""
    from agent.journal.locate import add_location_options

    p = sub.add_parser("report", help="auditor report of a period (html, pdf, csv, json)",
                       description="Summary, control coverage, accountability, violations with evidence, "
                                   "monitoring continuity and integrity of a period, from the local journal "
                                   "or merged from evidence bundles of many hosts.")
    add_location_options(p)
    add_period_options(p)
    p.add_argument("--format", choices=FORMATS, default="html")
    p.add_argument("--lang", choices=("zh", "en"), default="zh")
    p.add_argument("--out", type=Path, metavar="FILE", help="file to write (default: standard output)")
    p.add_argument("--evidence", nargs="+", type=Path, metavar="BUNDLE",
                   help="evidence bundles (dutywatch export) to merge into a fleet report, instead of the journal")
    p.add_argument("--keys", type=Path, metavar="DIR",
                   help="trusted public keys of the bundles' hosts, one HOST.pem each (dutywatch journal pubkey)")
    p.add_argument("--pubkey", type=Path, metavar="PATH", help="trusted public key of the local journal")
    p.add_argument("--registry", type=Path, metavar="FILE", help="registry whose people name the custodians, "
                   "media holders and operators recorded by account (default: the config's)")
    p.add_argument("--prometheus", metavar="URL", help="add fleet-wide figures from this Prometheus")
    p.add_argument("--prometheus-job", default="dutywatch", metavar="JOB",
                   help="the scrape job of the agents (default dutywatch)")
    p.add_argument("--rules", action="append", metavar="PATH", help="a rule file or directory for control "
                   "coverage (repeat for several; default: the config's, else the shipped packs)")
    p.add_argument("--font", type=Path, metavar="PATH", help="CJK TTF/TTC font for PDF (default: config, then "
                   "installed fonts)")
    p.add_argument("--incident", type=positive_int, metavar="SEQ",
                   help="a one-page incident sheet (html or pdf) for the finding at record SEQ instead of a report")
    p.add_argument("--max-rows", type=positive_int, default=1000, metavar="N",
                   help="violations listed with their evidence (default 1000; the rest are counted)")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Any:
    """The agent config when one is there; an auditor's machine may have none."""
    from agent.config import load_config
    from agent.paths import DEFAULT_CONFIG

    path = Path(args.config)
    if path == DEFAULT_CONFIG and not path.exists():
        return None
    return load_config(path)


def _ruleset(args: argparse.Namespace, cfg: Any) -> Any:
    from agent.engine.rules import load_rules
    from agent.paths import shipped_rules_dir

    if args.rules:
        return load_rules(args.rules)
    if cfg is not None:
        return load_rules(cfg.rules, cfg.rules_optional, sigma_skip_unsupported=cfg.sigma_skip_unsupported)
    return load_rules([shipped_rules_dir()])


def _people(args: argparse.Namespace, cfg: Any) -> tuple[tuple[str, str], ...]:
    """The registry's people (account, name), so the report names the custodian and holders, not accounts.

    A ``--registry`` that does not load is an error (LoadError, path:line:col);
    the config's registry that does not load leaves people as the records name
    them (the agent records names; older records hold accounts).
    """
    from agent.errors import DutyWatchError
    from agent.registry import load_registry
    if args.registry is not None:
        registry = load_registry(args.registry)
    elif cfg is None:
        return ()
    else:
        try:
            registry = load_registry(cfg.registry)
        except (DutyWatchError, OSError):
            return ()
    return tuple((p.account, p.name) for p in registry.people if p.name)


def _write(out: Path | None, binary: bool, body: Callable[[Any], object]) -> None:
    """Write to ``out`` through a new file (never a planted link) and a rename, or to standard output."""
    from agent.report.errors import ReportError

    if out is None:
        if binary:
            body(sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            body(sys.stdout)
            sys.stdout.flush()
        return
    from agent.textsafe import write_new
    try:
        write_new(out, body, binary=binary)
    except OSError as exc:
        raise ReportError(f"{out}: cannot write the report: {exc.strerror}") from exc


def run(args: argparse.Namespace) -> int:
    """Make the report; exit 1 (after writing it) when a source failed verification."""
    from agent.errors import LoadError, LoadErrors
    from agent.journal.locate import journal_path
    from agent.report import build, fleet, sources
    from agent.report.errors import ReportError

    if args.incident is not None:
        return _incident(args)
    now = time.time()
    since, until = period_of(args, now)
    period = sources.Period(since, until)
    try:
        cfg = _config(args)
        ruleset = _ruleset(args, cfg) if args.format != "csv" else None
        people = _people(args, cfg)
    except (LoadError, LoadErrors) as exc:
        from agent.commands.common import error_lines, print_errors
        print_errors(error_lines(exc))
        return 1
    tz = dt.datetime.now().astimezone().tzinfo or dt.UTC
    opts = build.Options(period, args.lang, tz, args.max_rows, args.pubkey, args.keys, people)
    font = None
    if args.format == "pdf":
        from agent.report.pdf import find_font
        font = find_font(args.font or (cfg.report_font if cfg is not None else None))
    metrics = None
    if args.prometheus and args.format != "csv":
        if since is None:
            raise ReportError("--prometheus needs --since: the fleet figures are for a period")
        from agent.report.prometheus import PrometheusClient, fleet_metrics
        metrics = fleet_metrics(PrometheusClient(args.prometheus), since, until or now, args.prometheus_job)

    if args.evidence:
        good, bad = fleet.check_bundles(args.evidence, args.keys, period)
        for i in bad:
            print(f"REFUSED bundle {i.path}: {i.problem}", file=sys.stderr)
        for i in good:
            beyond = f" (holds records to {i.extends_to}, beyond the period)" if i.extends_to else ""
            print(f"OK bundle {i.path}: host {i.host}, records {i.first_seq}..{i.through_seq or i.last_seq}"
                  f"{beyond}", file=sys.stderr)
        failed = len(bad)
        records: Any = fleet.bundles_records(good, period)

        def make() -> build.Report:
            return fleet.fleet_report(good, bad, opts, ruleset, now, metrics)
    else:
        path = journal_path(args)
        integrity = sources.journal_integrity(path, args.pubkey) if args.format == "csv" else None
        # A journal that fails verification gives no row: the CSV is evidence too.
        records = sources.journal_records(path, period) if integrity is None or integrity.ok else iter(())
        failed = 0

        def make() -> build.Report:
            return build.local_report(path, opts, ruleset, now, metrics)

    if args.format == "csv":
        from agent.report.csvout import write_csv
        _write(args.out, False, lambda f: write_csv(build.findings_only(records), f, args.lang, tz, dict(people)))
        if not args.evidence and integrity is not None and not integrity.ok:
            failed = 1
            print(f"FAILED journal {integrity.path}: {integrity.problem}", file=sys.stderr)
    else:
        r = make()
        if not r.fleet and not r.integrity[0].ok:
            failed = 1
            print(f"FAILED journal {r.integrity[0].path}: {r.integrity[0].problem}", file=sys.stderr)
        _render(r, args.format, args.out, font)
    where = args.out or "standard output"
    print(f"wrote {args.format} report to {where}" + (f"; {failed} source(s) failed verification, see the "
                                                       "integrity section" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _incident(args: argparse.Namespace) -> int:
    """The incident sheet of one finding; exit 1 when its evidence does not verify."""
    from agent.journal.locate import journal_path
    from agent.report.errors import ReportError
    from agent.report.incident import incident

    if args.format not in ("html", "pdf"):
        raise ReportError("--incident makes an HTML or PDF sheet: use --format html or --format pdf")
    cfg = _config(args)
    tz = dt.datetime.now().astimezone().tzinfo or dt.UTC
    pubkey = args.pubkey
    path = journal_path(args)
    if pubkey is None and args.keys is not None:
        from agent.report.sources import journal_host, trusted_key_for
        pubkey = trusted_key_for(args.keys, journal_host(path))
    sheet = incident(path, args.incident, args.lang, tz, pubkey, _people(args, cfg))
    if args.format == "html":
        from agent.report.html import write_document
        _write(args.out, False, lambda f: write_document(sheet.lang, sheet.title, sheet.facts, sheet.sections, f,
                                                         one_page=True))
    else:
        from agent.report.pdf import find_font, write_document_pdf
        font = find_font(args.font or (cfg.report_font if cfg is not None else None))
        _write(args.out, True, lambda f: write_document_pdf(sheet.lang, sheet.title, sheet.facts, sheet.sections, f,
                                                            font, one_page=True))
    print(f"wrote incident sheet of record {args.incident} to {args.out or 'standard output'}"
          + ("" if sheet.ok else "; its evidence FAILED verification"), file=sys.stderr)
    return 0 if sheet.ok else 1


def _render(r: Any, fmt: str, out: Path | None, font: Path | None) -> None:
    if fmt == "html":
        from agent.report.html import write_html
        _write(out, False, lambda f: write_html(r, f))
    elif fmt == "json":
        from agent.report.jsonout import write_json
        _write(out, False, lambda f: write_json(r, f))
    else:
        from agent.report.pdf import write_pdf
        assert font is not None
        _write(out, True, lambda f: write_pdf(r, f, font))
