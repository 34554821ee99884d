"""Fixtures for the central stack's tests: the real promtool and amtool."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
from centralkit import run, tool


@pytest.fixture
def promtool() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``promtool(*args)``: run the real promtool."""
    path = tool("promtool")
    return lambda *args, cwd=None: run([path, *map(str, args)], cwd)


@pytest.fixture
def amtool() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``amtool(*args)``: run the real amtool."""
    path = tool("amtool")
    return lambda *args, cwd=None: run([path, *map(str, args)], cwd)
