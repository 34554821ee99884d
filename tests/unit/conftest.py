"""Fixtures for the unit tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["intl", "gm"])
def crypto(request: pytest.FixtureRequest) -> str:
    """Each journal crypto suite in turn: intl (SHA-256, Ed25519) and gm (SM3, SM2)."""
    name: str = request.param
    return name
