"""The asset index (identity by inode, content by hash) and the per-process open limit, on real files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from collectors.assets import AssetIndex
from collectors.openlimit import OpenLimiter


def _tree(tmp_path: Path) -> tuple[AssetIndex, Path, Path]:
    secret = tmp_path / "classified" / "sub"
    secret.mkdir(parents=True)
    plan = secret / "plan.txt"
    plan.write_text("预算\n")
    (tmp_path / "classified" / "link-out").symlink_to("/etc/hostname")  # not followed, not indexed
    other = tmp_path / "home.txt"
    other.write_text("午餐\n")
    index = AssetIndex([f"{tmp_path / 'classified'}/**"])
    assert index.load() == 1
    return index, plan, other


def test_every_name_of_an_asset_leads_back_to_its_registered_name(tmp_path: Path) -> None:
    index, plan, other = _tree(tmp_path)
    link = tmp_path / "alias.txt"
    os.link(plan, link)
    st, so = os.stat(link), os.stat(other)
    found = index.lookup(st.st_dev, st.st_ino)
    assert found is not None and found.path == str(plan)
    assert index.lookup(so.st_dev, so.st_ino) is None


def test_moved_out_an_asset_keeps_its_identity_and_deleted_it_goes(tmp_path: Path) -> None:
    index, plan, _ = _tree(tmp_path)
    out = tmp_path / "moved.txt"
    st = os.stat(plan)
    os.rename(plan, out)
    index.moved(str(plan), str(out))
    assert index.lookup(st.st_dev, st.st_ino).path == str(plan)  # type: ignore[union-attr]
    inside = tmp_path / "classified" / "back.txt"
    os.rename(out, inside)
    index.moved(str(out), str(inside))
    assert index.lookup(st.st_dev, st.st_ino).path == str(inside)  # type: ignore[union-attr]
    inside.unlink()
    index.forget(str(inside))
    assert index.lookup(st.st_dev, st.st_ino) is None and len(index) == 0


def test_content_is_matched_only_against_assets_of_the_same_size(tmp_path: Path) -> None:
    index, plan, _ = _tree(tmp_path)
    copy = tmp_path / "copy.dat"
    copy.write_bytes(plan.read_bytes())
    fd = os.open(copy, os.O_RDONLY)
    try:
        digest, asset = index.same_content(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    assert digest == hashlib.sha256(plan.read_bytes()).hexdigest() and asset is not None
    assert asset.path == str(plan)
    same_size = tmp_path / "same-size.dat"
    same_size.write_bytes(b"x" * plan.stat().st_size)
    fd = os.open(same_size, os.O_RDONLY)
    try:
        assert index.same_content(fd, plan.stat().st_size)[1] is None
        assert index.same_content(fd, 12345) == (None, None)  # no asset of that size: not even hashed
    finally:
        os.close(fd)


def test_the_open_limit_is_per_process_and_its_losses_are_told_with_counts() -> None:
    lim = OpenLimiter(rate=10.0, burst=5.0)
    assert [lim.allow(1, 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert lim.allow(2, 0.0)  # another process has its own budget
    assert lim.allow(1, 0.2)  # and the first one's refills
    lim.lost("open_rate", "pid 1 (cat)", 2)
    lim.lost("kernel_overflow")
    assert lim.report() == "operations not reported: 2 open_rate (pid 1 (cat) 2); 1 kernel_overflow"
    assert lim.report() is None
