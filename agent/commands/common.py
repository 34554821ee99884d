"""Options and loading steps that several commands share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from agent.errors import LoadError, LoadErrors
from agent.paths import DEFAULT_CONFIG


def add_config(parser: argparse.ArgumentParser) -> None:
    """The ``--config PATH`` option every command takes."""
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help=f"agent config (default {DEFAULT_CONFIG})")


def config_path(args: argparse.Namespace) -> Path:
    """The config file named on the command line, or the default."""
    return args.config if getattr(args, "config", None) is not None else DEFAULT_CONFIG


def error_lines(exc: LoadError | LoadErrors) -> list[str]:
    """``path:line:col: message`` lines of a load failure."""
    if isinstance(exc, LoadErrors):
        return [str(e) for e in exc.errors]
    return [str(exc)]


def print_errors(lines: Iterable[str]) -> None:
    """Print load errors to standard error, one per line."""
    for line in lines:
        print(line, file=sys.stderr)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def add_period_options(parser: argparse.ArgumentParser, until_help: str = "as --since (default: now)") -> None:
    """``--since`` and ``--until``, as the journal commands take them."""
    parser.add_argument("--since", help="ISO 8601 date or date-time, or a duration back from now (90m, 24h, 7d)")
    parser.add_argument("--until", help=until_help)


def period_of(args: argparse.Namespace, now: float) -> tuple[float | None, float | None]:
    """The times ``--since`` and ``--until`` name (None when not given); a bad value raises TimeSpecError."""
    from agent.timespec import parse_timespec

    since = parse_timespec(args.since, now, option="--since") if args.since else None
    until = parse_timespec(args.until, now, option="--until") if args.until else None
    return since, until
