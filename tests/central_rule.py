"""The rule pack a central policy bundle carries in the policy tests and bench."""

from __future__ import annotations


def central_rule(rule_id: str) -> str:
    """A rule pack ``central`` with one alert rule ``rule_id``: a process named forbidden-tool."""
    return f"""\
pack: central
rules:
  - id: {rule_id}
    title: {{zh: 中心规则, en: Central rule}}
    when: process.name == "forbidden-tool"
    severity: high
    action: alert
    accountable: [operator]
    controls: ["谁主管谁负责，谁运行谁负责"]
    message: {{zh: "禁用工具 {{process.name}}", en: "forbidden tool {{process.name}}"}}
"""
