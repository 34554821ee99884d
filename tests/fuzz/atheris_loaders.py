"""Coverage-guided fuzzing of the loaders with atheris (where it installs): `python atheris_loaders.py -runs=N`.

Each input is written as a YAML file and loaded by the rule, registry and
config loaders, and compiled as a ``when`` condition. Anything but the
project's LoadError/LoadErrors crashes the run with the input saved.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from agent.config import load_config
    from agent.engine.expr import Scope, compile_when
    from agent.engine.rules import load_rules
    from agent.errors import LoadError, LoadErrors, Location
    from agent.registry import load_registry

WORK = Path(tempfile.mkdtemp(prefix="dw-atheris-"))
SCOPE = Scope({"temp_dirs": ("/tmp/",)}, {})


def one(data: bytes) -> None:
    """Feed one input to every loader."""
    fdp = atheris.FuzzedDataProvider(data)
    text = fdp.ConsumeUnicodeNoSurrogates(len(data))
    p = WORK / "input.yaml"
    p.write_text(text, encoding="utf-8")
    for fn in (lambda x: load_rules([x]), load_registry, load_config):
        try:
            fn(p)
        except (LoadError, LoadErrors) as exc:
            assert str(p) in str(exc)
    with contextlib.suppress(LoadError):
        compile_when(text[:2000], Location("input.yaml", 1, 1), SCOPE)


if __name__ == "__main__":
    sys.setrecursionlimit(1000)
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
