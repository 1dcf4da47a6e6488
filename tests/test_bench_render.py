"""`zoomq bench render` end to end on the miniature models: every mode is measured in its own
process and the report, its targets table, the plot and the raw figures are written."""

from __future__ import annotations

import json
import re

import pytest
from conftest import run_cli
from PIL import Image

from zoomq.bench.render import MODES, REFERENCE


@pytest.mark.slow
def test_bench_render_writes_the_report(tmp_path, capsys):
    out = tmp_path / "docs" / "benchmarks.md"
    out.parent.mkdir()
    out.write_text("# Benchmarks\n\n<!-- bench:queue -->\nqueue figures\n<!-- /bench:queue -->\n")
    code, stdout, _ = run_cli("bench", "render", "--tiny", "--quick", "--models-dir", str(tmp_path / "models"),
                              "--out", str(out), capsys=capsys)
    assert code == 0
    report = out.read_text()
    assert "queue figures" in report  # the other benchmark's section is left alone
    assert "these figures check the benchmark itself" in report
    for mode in MODES:
        row = next(line for line in report.splitlines() if line.startswith(f"| {mode.name} |"))
        assert "(1.00×)" in row if mode.name == REFERENCE else re.search(r"\(\d+\.\d\d×\)", row), row
    assert report.count("| ≤ ") == 5 and "of the matmul peak" in report
    assert Image.open(out.parent / "bench-render.png").size[0] > 500
    raw = json.loads((out.parent / "bench-render.json").read_text())
    assert raw["repeats"] == 1 and raw["medians"]["machine"]["matmul_peak"] > 0
    assert all(raw["medians"][m.name].get("peak_rss_t2i", 0) > 100 * 2**20 for m in MODES)
    rss = {m.name: raw["medians"][m.name]["peak_rss_t2i"] for m in MODES}
    assert len(set(rss.values())) > 1, rss  # each process's own peak, not one inherited figure
    worker = raw["worker"]  # real worker processes: start-up, memory, and the concurrency figures
    assert 0 < worker["seconds_per_step"] < min(worker["first_step"], worker["first_step_cache_warm"]) < 120
    assert 100 * 2**20 < worker["worker_peak_private"] <= worker["worker_peak_rss"]
    assert worker["jobs_per_min_1"] > 0 and worker["jobs_per_min_2"] > 0
    assert "2 processes" in report and "first step" in report
    assert 0 < worker["warmup_import"] < worker["first_step"] and 0 < worker["warmup_compile"] < worker["first_step"]
    assert "importing the render core" in report and raw["seconds"] > worker["first_step"]
