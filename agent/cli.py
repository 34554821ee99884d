"""The ``dutywatch`` command line. Each command lives in ``agent/commands/``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from agent import __version__
from agent.errors import DutyWatchError, access_hint

# Each module provides ``register(subparsers)``, which adds its command and
# sets ``func(args) -> int`` on the parser.
COMMAND_MODULES = (
    "agent.commands.check",
    "agent.commands.gen",
    "agent.commands.test_rules",
    "agent.commands.run",
    "agent.commands.reload",
    "agent.commands.events",
    "agent.commands.verify",
    "agent.commands.journal",
    "agent.commands.export",
    "agent.commands.report",
    "agent.commands.replay",
    "agent.commands.assess",
    "agent.commands.enforce",
    "agent.commands.policy",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="dutywatch",
        description="DutyWatch: classified-information and network-security compliance agent",
    )
    parser.add_argument("--version", action="version", version=f"dutywatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except DutyWatchError as exc:
        print(f"dutywatch: {exc}", file=sys.stderr)
        return 1
    except PermissionError as exc:
        # A command that reads files it may not read says so in one line, not a traceback.
        print(f"dutywatch: {exc.filename or ''}: {exc.strerror}{access_hint(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
