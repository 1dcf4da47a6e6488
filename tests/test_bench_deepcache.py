"""`zoomq bench deepcache` end to end on the miniature models: every figure in its own process, the
report section written beside the others', its ratios against interval 1 and the raw figures."""

from __future__ import annotations

import json
import re

import pytest

from conftest import report_beside_another, run_cli
from zoomq.bench.deepcache import INTERVALS


@pytest.mark.slow
def test_bench_deepcache_writes_its_section(tmp_path, capsys):
    out = report_beside_another(tmp_path)
    code, stdout, err = run_cli("bench", "deepcache", "--tiny", "--models-dir", str(tmp_path / "models"),
                                "--out", str(out), capsys=capsys)
    assert code == 0, err
    report = out.read_text()
    assert "queue figures" in report and "<!-- bench:deepcache -->" in report
    assert "these figures check the benchmark itself" in report
    assert re.search(r"\*\*\d+ %\*\* of the UNet call in OpenVINO", report)
    for work in ("text-to-image", "zoom keyframe"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {work}"))
        assert row.count("×)") == len(INTERVALS) and "(1.00×)" in row, row
    raw = json.loads((out.parent / "bench-deepcache.json").read_text())
    m = raw["medians"]
    assert 0 < m["unet_shallow"] < m["unet_full"] and 0 < m["shallow_share"] < 1
    assert all(m[f"{w}_{n}"] > 0 for w in ("t2i", "keyframe") for n in INTERVALS)
    assert "text-to-image at interval 3" in stdout
