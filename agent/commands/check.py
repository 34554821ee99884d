"""``dutywatch check``: validate config, registry and rules; name every problem."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.commands.common import add_config, config_path, error_lines, print_errors
from agent.engine.rules import load_rules
from agent.errors import LoadError, LoadErrors
from agent.registry import load_registry
from agent.strictmodes import load_checked_config


def register(sub: Any) -> None:
    """Add the command."""
    p = sub.add_parser("check", help="validate config, registry and rules")
    add_config(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when everything loads, else 1 with ``path:line:col: message`` lines."""
    try:
        config = load_checked_config(config_path(args))
    except (LoadError, LoadErrors) as exc:
        print_errors(error_lines(exc))
        return 1
    errors: list[str] = []
    warnings: list[str] = []
    summary = []
    try:
        registry = load_registry(config.registry)
        if registry.example:
            errors.append(_example_problem(config.registry))
        summary.append(f"registry {config.registry}: host {registry.host.id}, {len(registry.people)} people, "
                       f"{len(registry.assets)} assets")
        from agent.enforce.channel import derive
        channel, bad = derive(config, registry)
        errors += [str(e) for e in bad]
        if config.enforce.active and not bad:
            summary.append(f"enforcement {config.enforce.mode}: forbidden zones {', '.join(channel.forbidden)}; "
                           f"kept open: {', '.join(sorted(channel.named.values())) or 'loopback'}"
                           + (f", the scrape port {channel.layout.listen_port}" if channel.layout.listen_port
                              else ""))
    except (LoadError, LoadErrors) as exc:
        errors += error_lines(exc)
    try:
        rules = load_rules(config.rules, optional=config.rules_optional,
                           sigma_skip_unsupported=config.sigma_skip_unsupported)
        skipped = f", {len(rules.skipped)} unsupported Sigma rules skipped" if rules.skipped else ""
        summary.append(f"rules: {len(rules.rules)} enabled, {len(rules.disabled)} disabled{skipped}, "
                       f"from {len(rules.files)} files")
        warnings += [f"{e} (skipped: sigma.skip_unsupported is true)" for e in rules.skipped]
    except (LoadError, LoadErrors) as exc:
        errors += error_lines(exc)
    errors += _extra_checks(config)
    errors += _policy_checks(config, summary)
    print_errors(warnings)
    if errors:
        print_errors(errors)
        print(f"{len(errors)} problem{'s' if len(errors) != 1 else ''} found")
        return 1
    print(f"config {config.path}: ok")
    for line in summary:
        print(line)
    return 0


def _example_problem(path: Path) -> str:
    """The shipped example registry, named at its ``example: true`` line with what to do."""
    line = 1
    try:
        for i, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if text.startswith("example:"):
                line = i
                break
    except OSError:
        pass
    return (f"{path}:{line}:1: this is the shipped example registry (example: true): the agent monitors and "
            "attributes nothing until it describes this host, its units, people, networks and assets; "
            "edit it, remove this line, then systemctl reload dutywatch")


def _extra_checks(config: Any) -> list[str]:
    """The optional parts: the exporter's web config and the syslog target."""
    errors: list[str] = []
    if config.web_config is not None:
        from agent.webconfig import load_web_config
        try:
            load_web_config(config.web_config)
        except (LoadError, LoadErrors) as exc:
            errors += error_lines(exc)
    if config.forward_syslog is not None:
        from agent.errors import Location
        from agent.forward.target import parse_target
        try:
            parse_target(config.forward_syslog, Location(config.path))
        except (LoadError, LoadErrors) as exc:
            errors += error_lines(exc)
    return errors


def _policy_checks(config: Any, summary: list[str]) -> list[str]:
    """The assessment policies the agent would run, validated like rule packs."""
    from agent.assess.policy import load_policies, policy_entries
    entries, optional = policy_entries(config.assess.policies)
    try:
        ps = load_policies(entries, optional)
    except (LoadError, LoadErrors) as exc:
        return error_lines(exc)
    summary.append(f"assessment: {sum(c.enabled for c in ps.checks)} checks from {len(ps.files)} policy files")
    return []
