"""What closing an insider's ways out costs: one section per part, each a function ``main`` calls.

Prints figures (medians of several rounds, so a noisy shared machine shows
less); asserts nothing about time. Run: ``.venv/bin/python tests/bench/bench_insider.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from insider_files import bench_assets, bench_catch_up, bench_renames
from insider_marking import bench_marking
from insider_network import bench_network


def main() -> None:
    """Every section, in turn."""
    bench_assets()
    bench_renames()
    bench_catch_up()
    bench_marking()
    bench_network()


if __name__ == "__main__":
    main()
