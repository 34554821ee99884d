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
