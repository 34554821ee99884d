"""Finding the journal for a command: ``--journal``, ``--state-dir``, or the config's ``state_dir``."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.paths import DEFAULT_CONFIG

JOURNAL_FILE = "journal.db"


def add_location_options(parser: argparse.ArgumentParser, *, journal: bool = True) -> None:
    """Add ``--config``, ``--state-dir`` and (optionally) ``--journal`` to a command."""
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="PATH",
                        help=f"agent config whose state_dir holds the journal (default {DEFAULT_CONFIG})")
    parser.add_argument("--state-dir", metavar="DIR", help="the state directory, instead of the config's")
    if journal:
        parser.add_argument("--journal", metavar="PATH", help="the journal file, instead of the config's")


def state_dir(args: argparse.Namespace) -> Path:
    """The state directory named by the options, else by the config."""
    if getattr(args, "state_dir", None):
        return Path(args.state_dir)
    if getattr(args, "journal", None):
        return Path(args.journal).parent
    from agent.config import load_config  # late: commands given --state-dir never parse a config
    return load_config(Path(args.config)).state_dir


def journal_path(args: argparse.Namespace) -> Path:
    """The journal file named by the options, else by the config."""
    if getattr(args, "journal", None):
        return Path(args.journal)
    return state_dir(args) / JOURNAL_FILE
