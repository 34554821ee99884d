"""Governed enforcement: what a ``block`` rule does, in force only where the config turns it on.

Every decision is journaled (what, why, until when, who can lift it), counted in
``dutywatch_enforcements_total{kind,result}`` and lifted by its TTL, by
``dutywatch enforce lift ID`` or by the agent's stop policy. Nothing the agent
puts in the kernel outlives it by more than its lease.
"""
