"""A noisy host's half hour reads in minutes: repeats grouped, details bounded, few pages, nothing broken."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.unit.report_noisy import DAEMONS, MINUTES, noisy_journal
from tests.unit.test_report_support import T0, run_cli

SCHEMA = json.loads((Path(__file__).parent / "report.schema.json").read_text(encoding="utf-8"))


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("noisy") / "state"
    noisy_journal(state)
    return state


def _args(state: Path, fmt: str, lang: str, out: Path) -> list[str]:
    return ["report", "--state-dir", str(state), "--format", fmt, "--lang", lang, "--out", str(out),
            "--since", _iso(T0), "--until", _iso(T0 + MINUTES * 60)]


def test_repeats_are_grouped_with_count_and_first_and_last(noisy: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    status, _, err = run_cli(_args(noisy, "json", "en", out))
    assert status == 0, err
    doc: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    jsonschema.validate(doc, SCHEMA)
    groups = doc["violation_groups"]["groups"]
    net = [g for g in groups if g["rule"] == "BM-NET-001"]
    assert len(net) == 3 and sum(g["count"] for g in net) == 150  # three addresses, fifty times each
    assert all(g["operator"] == "张三" and g["unit"] == "省发改委信息中心" and g["custodian"] == "张三"
               and g["title"]["zh"] == "涉密计算机违规外联" for g in net)
    assert groups[0]["severity"] == "critical"
    zr = [g for g in doc["unattributed_groups"] if g["rule"] == "ZR-001"]
    assert len(zr) == DAEMONS and all(g["count"] == MINUTES * 60 // 2 // DAEMONS for g in zr)
    # details: at most three of each group, every finding still counted
    v = doc["violations"]
    per: dict[tuple[str, str], int] = {}
    for row in v["rows"]:
        per[(row["rule"], row["object"])] = per.get((row["rule"], row["object"]), 0) + 1
    assert max(per.values()) <= 3
    assert v["total"] == doc["summary"]["findings"]["alerts"] == 150 + MINUTES * 60 // 2
    assert len(doc["accountability"]["unattributed"]["rows"]) <= 3 * DAEMONS


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_noisy_half_hour_fits_in_fifteen_pages(noisy: Path, tmp_path: Path, lang: str) -> None:
    if shutil.which("pdfinfo") is None:
        pytest.skip("pdfinfo not installed (apt-get install poppler-utils)")
    out = tmp_path / f"r-{lang}.pdf"
    status, _, err = run_cli(_args(noisy, "pdf", lang, out))
    assert status == 0, err
    info = subprocess.run(["pdfinfo", str(out)], check=True, capture_output=True, text=True, timeout=60).stdout
    pages = int(next(line.split()[-1] for line in info.splitlines() if line.startswith("Pages:")))
    assert pages <= 15, pages
    text = subprocess.run(["pdftotext", "-enc", "UTF-8", str(out), "-"], check=True, capture_output=True,
                          text=True, timeout=60).stdout
    lines = text.splitlines()
    # identifiers and times are never split across lines
    assert not any(line.rstrip().endswith(("BM-NET-00", "ZR-00", "BM-NET-", "ZR-")) for line in lines)
    assert not any(re.search(r"\d\d:\d\d:$|\d{4}-\d\d-$|\d{4}-\d\d-\d\d \d\d:$", line.rstrip()) for line in lines)
    # the header names the host, its unit, custodian and level
    head = "".join(text.split("\f")[0].split())
    assert "js-fgw-0042" in head and "省发改委信息中心" in head and "张三(zhangsan)" in head
    assert ("机密/内网" in head) if lang == "zh" else ("secret/intranet" in head)


def test_chart_suits_the_period_and_lifecycle_in_chinese(noisy: Path, tmp_path: Path) -> None:
    for lang in ("zh", "en"):
        out = tmp_path / f"r-{lang}.html"
        status, _, err = run_cli(_args(noisy, "html", lang, out))
        assert status == 0, err
        html = out.read_text(encoding="utf-8")
        if lang == "zh":
            assert "每 5 分钟趋势" in html and "每日趋势" not in html and ">00:25<" in html
            assert "代理启动（版本 0.1" in html and "代理正常停止" in html and "代理启动 agent.start 1" in html
        else:
            assert "Trend per 5 minutes" in html and "clean stop" in html
    # a day is charted per hour
    out = tmp_path / "day.html"
    status, _, err = run_cli(["report", "--state-dir", str(noisy), "--out", str(out), "--since", _iso(T0),
                              "--until", _iso(T0 + 86400)])
    assert status == 0, err
    assert "每小时趋势" in out.read_text(encoding="utf-8")
    # a month is charted by day
    out = tmp_path / "month.html"
    status, _, err = run_cli(["report", "--state-dir", str(noisy), "--out", str(out), "--since", _iso(T0 - 20 * 86400),
                              "--until", _iso(T0 + 10 * 86400)])
    assert status == 0, err
    assert "每日趋势" in out.read_text(encoding="utf-8")
