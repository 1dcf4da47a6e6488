"""`zoomq bench render` end to end on the miniature models: every mode is measured in its own
process and the report, its targets table, the plot and the raw figures are written; so is the
fast tier's section (SD-Turbo, the tiny decoder, a warm worker's request to PNG)."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from conftest import report_beside_another, run_cli
from zoomq.bench.fast_tier import WORKLOADS


@pytest.mark.slow
def test_bench_render_writes_the_report(tmp_path, capsys):
    out = report_beside_another(tmp_path)
    code, stdout, _ = run_cli("bench", "render", "--tiny", "--quick", "--models-dir", str(tmp_path / "models"),
                              "--out", str(out), capsys=capsys)
    assert code == 0
    report = out.read_text()
    assert "queue figures" in report  # the other benchmark's section is left alone
    assert "these figures check the benchmark itself" in report
    raw = json.loads((out.parent / "bench-render.json").read_text())
    # diffusers bf16 is the reference where the CPU computes bf16; elsewhere it is not run (hours)
    assert (raw["reference"] == "diffusers bf16") == (raw["auto_precision"] == "bf16")
    assert (raw["reference"] in raw["modes"]) and len(raw["modes"]) >= 6
    for mode in raw["modes"]:
        row = next(line for line in report.splitlines() if line.startswith(f"| {mode} |"))
        assert "(1.00×)" in row if mode == raw["reference"] else re.search(r"\(\d+\.\d\d×\)", row), row
    main = report[report.index("<!-- bench:render -->"):report.index("<!-- /bench:render -->")]
    assert main.count("| ≤ ") == 5 and "of the matmul peak" in main
    # bf16 matmuls only where the CPU computes bf16: elsewhere PyTorch's take many minutes
    assert ("matmul_torch_bf16" in raw["medians"]["machine"]) == (raw["auto_precision"] == "bf16")
    assert ("(no bf16 on this CPU)" in main) == (raw["auto_precision"] != "bf16")
    assert Image.open(out.parent / "bench-render.png").size[0] > 500
    assert raw["repeats"] == 1 and raw["medians"]["machine"]["matmul_peak"] > 0
    assert all(raw["medians"][m].get("peak_rss_t2i", 0) > 100 * 2**20 for m in raw["modes"])
    rss = {m: raw["medians"][m]["peak_rss_t2i"] for m in raw["modes"]}
    assert len(set(rss.values())) > 1, rss  # each process's own peak, not one inherited figure
    worker = raw["worker"]  # real worker processes: start-up, memory, and the concurrency figures
    assert 0 < worker["seconds_per_step"] < min(worker["first_step"], worker["first_step_cache_warm"]) < 120
    assert 100 * 2**20 < worker["worker_peak_private"] <= worker["worker_peak_rss"]
    assert worker["jobs_per_min_1"] > 0 and worker["jobs_per_min_2"] > 0
    assert "2 processes" in report and "first step" in report
    assert 0 < worker["warmup_import"] < worker["first_step"] and 0 < worker["warmup_compile"] < worker["first_step"]
    assert "importing the render core" in report and raw["seconds"] > worker["first_step"]

    fast = report[report.index("<!-- bench:fast -->"):report.index("<!-- /bench:fast -->")]
    raw = json.loads((out.parent / "bench-fast.json").read_text())
    peer, _ = raw["engines"]
    assert peer == ("diffusers bf16" if raw["auto_precision"] == "bf16" else "diffusers fp32")
    for w in WORKLOADS:
        for engine in raw["engines"]:
            row = next(line for line in fast.splitlines() if line.startswith(f"| {w.name} | {engine} |"))
            assert "(1.00×)" in row if engine == peer else re.search(r"\(\d+\.\d\d×\)", row), row
    for key, m in raw["medians"].items():  # every part measured, inside the whole render
        assert m["text"] > 0 and m["unet"] > 0 and m["decoder"] > 0, key
        assert m["rest"] > 0 and m["unet"] + m["decoder"] < m["render"], key
        assert (m["encoder"] > 0) == ("keyframe" in key), key  # a keyframe encodes the image to blend
    e2e = raw["worker"]
    assert 0 < e2e["best"] <= e2e["median"] and e2e["jobs"] == 3
    tiny = raw["medians"][f"zoomq|{WORKLOADS[1].name}"]
    assert e2e["best"] > tiny["render"] / 2  # the request includes a render of that kind
    assert "request to PNG" in fast and "| ≤ 1.3 s |" in fast
