"""`python -m benchmarks render` end to end on the miniature models: every mode is measured in its own
process and the report, its targets table, the plot and the raw figures are written; so is the
fast tier's section (SD-Turbo, the tiny decoder, a warm worker's request to PNG). The report is
checked by its figures and its tables' shape, not its wording."""

from __future__ import annotations

import json
import math
import re

import pytest
from PIL import Image

from benchmarks.__main__ import main
from benchmarks.fast_tier import WORKLOADS
from benchmarks.render_report import TARGETS
from support.cli import report_beside_another

RATIO = re.compile(r"\((\d+\.\d\d)×\)")


def section(report: str, name: str) -> str:
    return report[report.index(f"<!-- bench:{name} -->"):report.index(f"<!-- /bench:{name} -->")]


def table(text: str, header: str) -> list[list[str]]:
    """The body rows, as stripped cells, of the Markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", cell)]


@pytest.mark.slow
def test_bench_render_writes_the_report(tmp_path, capsys, bench_models):
    out = report_beside_another(tmp_path)
    models = bench_models(tmp_path / "models")
    assert main(["render", "--tiny", "--quick", "--models-dir", str(models), "--out", str(out)]) == 0
    report = out.read_text()
    assert "<!-- bench:queue -->\nqueue figures\n<!-- /bench:queue -->" in report  # another section, left alone
    raw = json.loads((out.parent / "bench-render.json").read_text())
    assert raw["models"] == "miniature" and raw["repeats"] == 1 and raw["steps"] == 5 and raw["sizes"] == [512]
    # diffusers bf16 is the reference where the CPU computes bf16; elsewhere it is not run (hours)
    assert (raw["reference"] == "diffusers bf16") == (raw["auto_precision"] == "bf16")
    assert raw["reference"] in raw["modes"] and len(raw["modes"]) >= 6

    main_part = section(report, "render")
    modes = table(main_part, "| mode |")
    assert [row[0] for row in modes] == raw["modes"] and all(len(row) == 8 for row in modes)
    for row in modes:
        ratios = [float(r) for cell in row[1:] for r in RATIO.findall(cell)]
        assert ratios and all(r > 0 for r in ratios), row
        assert set(ratios) == {1.0} if row[0] == raw["reference"] else True, row
    targets = table(main_part, "| target |")
    assert len(targets) == len(TARGETS) + 3 and all(len(row) == 4 for row in targets)
    assert all(numbers(row[2]) for row in targets[len(TARGETS):]), targets  # measured: peak share, start, RSS
    workers = table(main_part, "| worker figure |")
    assert len(workers) >= 8 and all(numbers(row[1]) and min(numbers(row[1])) > 0 for row in workers), workers
    assert Image.open(out.parent / "bench-render.png").size[0] > 500

    machine = raw["medians"]["machine"]
    assert machine["matmul_peak"] > 0
    # bf16 matmuls only where the CPU computes bf16: elsewhere PyTorch's take many minutes
    assert ("matmul_torch_bf16" in machine) == (raw["auto_precision"] == "bf16")
    assert all(raw["medians"][m].get("peak_rss_t2i", 0) > 100 * 2**20 for m in raw["modes"])
    rss = {m: raw["medians"][m]["peak_rss_t2i"] for m in raw["modes"]}
    assert len(set(rss.values())) > 1, rss  # each process's own peak, not one inherited figure
    worker = raw["worker"]  # real worker processes: start-up, memory, and the concurrency figures
    assert 0 < worker["seconds_per_step"] < min(worker["first_step"], worker["first_step_cold"]) < 120
    # the first step begins after launch and ends after it begins
    assert 0 < worker["denoise_start"] < worker["first_step"]
    assert 0 < worker["denoise_start_cold"] < worker["first_step_cold"]
    assert 100 * 2**20 < worker["worker_peak_private"] <= worker["worker_peak_rss"]
    assert worker["jobs_per_min_1"] > 0 and worker["jobs_per_min_2"] > 0
    assert 0 < worker["warmup_import"] < worker["first_step"] and 0 < worker["warmup_compile"] < worker["first_step"]
    assert raw["seconds"] > worker["first_step"]

    fast = section(report, "fast")
    raw = json.loads((out.parent / "bench-fast.json").read_text())
    peer, _ = raw["engines"]
    assert peer == ("diffusers bf16" if raw["auto_precision"] == "bf16" else "diffusers fp32")
    rows = table(fast, "| workload |")
    assert [(row[0], row[1]) for row in rows] == [(w.name, e) for w in WORKLOADS for e in raw["engines"]]
    for row in rows:
        found = RATIO.search(row[2])
        assert found, row
        ratio = float(found.group(1))
        assert ratio == 1.0 if row[1] == peer else ratio > 0, row
        assert all(numbers(cell) for cell in row[2:]), row
    for key, m in raw["medians"].items():  # every part measured, inside the whole render
        assert m["text"] > 0 and m["unet"] > 0 and m["decoder"] > 0, key
        assert m["rest"] > 0 and m["unet"] + m["decoder"] < m["render"], key
        assert (m["encoder"] > 0) == ("keyframe" in key), key  # a keyframe encodes the image to blend
    e2e = raw["worker"]
    assert 0 < e2e["best"] <= e2e["median"] and e2e["jobs"] == 3
    (target,) = table(fast, "| target |")
    assert f"{e2e['median']:.2f} s" in target[2] and all(math.isfinite(x) for x in numbers(target[2]))

    stdout = capsys.readouterr().out
    assert f"median {e2e['median']:.2f} s" in stdout and f"written to {out}" in stdout
