"""Install the DutyWatch agent, its collectors, shipped rules and console script."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent


def _version() -> str:
    for line in (HERE / "agent" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("no __version__ in agent/__init__.py")


def _package_tree(top: str) -> list[str]:
    return sorted(
        str(p.parent).replace("/", ".")
        for p in Path(top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    )


setup(
    name="dutywatch",
    version=_version(),
    description="Host agent for classified-information and network-security compliance",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="GPL-2.0-or-later",
    license_files=["LICENSE"],
    python_requires=">=3.11",
    packages=_package_tree("agent") + _package_tree("collectors"),
    # The demo config and registry travel inside the package; the shipped rule
    # packs and their samples go to <prefix>/share/dutywatch, where
    # agent.paths finds them after a pip install.
    package_data={"agent": ["data/*.yaml"]},
    data_files=[
        ("share/dutywatch/rules", sorted(str(p) for p in Path("rules").glob("*.yaml"))),
        ("share/dutywatch/rules/tests", sorted(str(p) for p in Path("rules/tests").glob("*.yaml"))),
        ("share/dutywatch/rules/assess", sorted(str(p) for p in Path("rules/assess").glob("*.yaml"))),
        ("share/dutywatch/rules/assess/tests", sorted(str(p) for p in Path("rules/assess/tests").glob("*.yaml"))),
        ("share/dutywatch/rules/tests/fixtures",
         sorted(str(p) for p in Path("rules/tests/fixtures").glob("*.yaml"))),
    ],
    install_requires=[
        "PyYAML>=6.0",
        "psutil>=5.9",
        "prometheus-client>=0.17",
        "watchdog>=3.0",
        "cryptography>=41",
        "bcrypt>=4.0",
        "pypdf>=7.1",
        "fpdf2>=2.7",
        "msgspec>=0.18",
        "olefile>=0.46",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "hypothesis>=6.80",
            "ruff>=0.4",
            "mypy>=1.8",
            "types-PyYAML",
            "jsonschema>=4.17",
        ],
    },
    entry_points={"console_scripts": ["dutywatch = agent.cli:main"]},
)
