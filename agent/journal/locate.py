"""Finding the journal for a command: ``--journal``, ``--state-dir``, or the config's ``state_dir``."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from agent.journal.errors import JournalError
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
    try:
        config_mod = importlib.import_module("agent.config")
    except ModuleNotFoundError:
        raise JournalError(
            f"{args.config}: this build cannot read agent configs yet; pass --state-dir DIR or --journal PATH"
        ) from None
    return Path(config_mod.load_config(Path(args.config)).state_dir)


def journal_path(args: argparse.Namespace) -> Path:
    """The journal file named by the options, else by the config."""
    if getattr(args, "journal", None):
        return Path(args.journal)
    return state_dir(args) / JOURNAL_FILE
