"""The PDF report read back with poppler's pdftotext: Chinese titles and unit names survive."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.paths import DEMO_REGISTRY
from agent.report.errors import ReportError
from agent.report.pdf import FONT_CANDIDATES, find_font
from tests.unit.test_report_support import build_journal, run_cli, shipped_ruleset

ZH_TITLES = ("合规审计报告", "一、概况", "二、控制点覆盖", "三、责任追究", "四、违规事件及证据", "五、监控连续性",
             "六、完整性验证")


def _pdftotext(pdf: Path) -> str:
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext not installed (apt-get install poppler-utils)")
    return subprocess.run(["pdftotext", "-enc", "UTF-8", str(pdf), "-"], check=True, capture_output=True,
                          text=True, timeout=60).stdout


def _font() -> Path:
    try:
        return find_font(None)
    except ReportError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A journal of every shipped sample's findings."""
    s = tmp_path_factory.mktemp("pdf") / "state"
    build_journal(s, shipped_ruleset())
    return s


def test_chinese_titles_and_units_readable(state: Path, tmp_path: Path) -> None:
    font = _font()
    out = tmp_path / "r.pdf"
    status, _, err = run_cli(["report", "--state-dir", str(state), "--format", "pdf", "--out", str(out),
                              "--font", str(font)])
    assert status == 0, err
    text = _pdftotext(out)
    squeezed = "".join(text.split())
    for title in ZH_TITLES:
        assert title in squeezed, title
    for unit in ("省发改委信息中心", "省发展和改革委员会", "张三"):
        assert unit in squeezed, unit
    assert "dutywatchverify--journal" in squeezed


def test_english_pdf_readable(state: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.pdf"
    status, _, err = run_cli(["report", "--state-dir", str(state), "--format", "pdf", "--lang", "en",
                              "--out", str(out), "--font", str(_font())])
    assert status == 0, err
    squeezed = "".join(_pdftotext(out).split())
    assert "2.Controlcoverage" in squeezed and "省发改委信息中心" in squeezed


def test_font_named_in_config(state: Path, tmp_path: Path) -> None:
    font = _font()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"registry: {DEMO_REGISTRY}\nstate_dir: {state}\nreport: {{font: {font}}}\n", encoding="utf-8")
    out = tmp_path / "r.pdf"
    status, _, err = run_cli(["report", "--config", str(cfg), "--format", "pdf", "--out", str(out)])
    assert status == 0, err
    assert "一、概况" in "".join(_pdftotext(out).split())
    cfg.write_text(f"registry: {DEMO_REGISTRY}\nstate_dir: {state}\nreport: {{font: {tmp_path}/none.ttc}}\n",
                   encoding="utf-8")
    status, _, err = run_cli(["report", "--config", str(cfg), "--format", "pdf", "--out", str(out)])
    assert status == 1 and "none.ttc: no such file" in err and "apt-get install fonts-wqy-zenhei" in err


def test_no_font_fails_with_install_hint(tmp_path: Path) -> None:
    with pytest.raises(ReportError) as caught:
        find_font(None, [tmp_path / "missing.ttc"])
    assert "apt-get install fonts-wqy-zenhei" in str(caught.value) and "report: {font: PATH}" in str(caught.value)
    assert FONT_CANDIDATES[0].name == "wqy-zenhei.ttc"


def test_not_a_font_fails_clearly(state: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake.ttf"
    fake.write_bytes(b"not a font at all")
    status, _, err = run_cli(["report", "--state-dir", str(state), "--format", "pdf", "--out",
                              str(tmp_path / "r.pdf"), "--font", str(fake)])
    assert status == 1 and "cannot embed this font" in err
    assert not (tmp_path / "r.pdf").exists()
