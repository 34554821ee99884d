"""The shared folder beside the repository: third-party test data (``vendor/``) and the controls catalogue.

Tests read it in place, never copy it. It is ``../shared`` from the
repository, else ``/work/shared`` (where a clone made elsewhere finds it).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASES = (REPO.parent / "shared", Path("/work/shared"))


def shared_path(*parts: str) -> Path | None:
    """``parts`` under the first shared folder that has it, or None."""
    for base in BASES:
        p = base.joinpath(*parts)
        if p.exists():
            return p
    return None
