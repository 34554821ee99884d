"""Attribution plus evaluation throughput: shipped packs, then with 1,000 extra rules.

Run with `make bench`. Prints events/s as the median of three passes over
1,000,000 events (50,000 distinct events cycled 20 times, so the
attribution caches see realistic churn), and the ratio between the two rule sets.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.attribution import Attributor
from agent.engine.engine import Engine
from agent.engine.rules import load_rules
from agent.paths import DEMO_REGISTRY, shipped_rules_dir
from agent.registry import load_registry
from tests.bench.engine_workload import make_events, write_extra_rules

TOTAL = 1_000_000
DISTINCT = 50_000


def run(engine: Engine, attribute: Attributor, events: list, rounds: int) -> tuple[float, int]:
    match = engine.match
    hits = 0
    t0 = time.perf_counter()
    for _ in range(rounds):
        for e in events:
            if match(attribute(e)):
                hits += 1
    return time.perf_counter() - t0, hits


def measure(label: str, rule_paths: list[Path], events: list) -> float:
    ruleset = load_rules(rule_paths)
    engine = Engine(ruleset)
    rounds = TOTAL // len(events)
    rates = []
    hits = 0
    for _ in range(3):
        attribute = Attributor(load_registry(DEMO_REGISTRY))  # cold caches each pass
        secs, hits = run(engine, attribute, events, rounds)
        rates.append(rounds * len(events) / secs)
    rate = statistics.median(rates)
    print(f"engine {label}: {len(ruleset.rules)} rules, {rounds * len(events):,} events, "
          f"{rate:,.0f} events/s (median of 3; runs {', '.join(f'{r:,.0f}' for r in rates)}), "
          f"{hits / (rounds * len(events)):.1%} events with findings")
    return rate


def main() -> None:
    events = make_events(DISTINCT)
    base = measure("shipped packs", [shipped_rules_dir()], events)
    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp) / "generated.yaml"
        write_extra_rules(extra, 1000)
        more = measure("shipped + 1,000 generated", [shipped_rules_dir(), extra], events)
    print(f"engine slowdown with 1,000 extra rules: {base / more:.2f}x (target < 3x)")


if __name__ == "__main__":
    main()
