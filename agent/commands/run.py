"""``dutywatch run``: the agent in the foreground (systemd Type=notify)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from agent.commands.common import add_config, config_path


def register(sub: Any) -> None:
    """Add the command."""
    p = sub.add_parser("run", help="run the agent in the foreground")
    add_config(p)
    p.add_argument("--state-dir", type=Path, default=None, help="override the config's state_dir")
    p.add_argument("--log-level", default=os.environ.get("DUTYWATCH_LOG_LEVEL", "info"),
                   choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM or SIGINT."""
    from agent.textsafe import VisibleFormatter
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(VisibleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    from agent.daemon.agent import run_agent
    return run_agent(config_path(args), args.state_dir)
