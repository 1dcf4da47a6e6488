"""`python -m benchmarks scaling` on the miniature UNet: its report section and raw figures, its
thread counts, its bounds, and the UNet-only builder's weights being the whole pipeline builder's.
The report is checked by its figures and its table's shape, not its wording."""

from __future__ import annotations

import json
import re

import pytest
import torch

from benchmarks import unet_scaling as scaling
from benchmarks.__main__ import main
from support.cli import report_beside_another


def test_default_threads_halve_down_from_the_cpus():
    assert scaling.default_threads(16) == [16, 8, 4, 2, 1]
    assert scaling.default_threads(6) == [6, 4, 2, 1]
    assert scaling.default_threads(1) == [1]


def test_bounds_follow_the_calls_they_count():
    row = {"full_2": 2.0, "full_1": 1.2, "shallow_2": 1.0, "shallow_1": 0.5}
    assert scaling.split_bound(row) == pytest.approx(0.6)
    # one whole and two shallow batch-1 calls against three whole batch-2 calls
    assert scaling.both_bound(row, 3) == pytest.approx((1.2 + 2 * 0.5) / 6.0)


def test_the_unet_alone_has_the_pipelines_weights(tmp_path):
    from diffusers import UNet2DConditionModel

    from zoomq.model_prep.architectures import build_random_pipeline, build_random_unet

    build_random_unet(tmp_path / "alone", full=False, inpainting=True, size=64, seed=5)
    build_random_pipeline(tmp_path / "pipe", full=False, inpainting=True, size=64, prediction_type="epsilon", seed=5)
    alone = UNet2DConditionModel.from_pretrained(tmp_path / "alone", subfolder="unet").state_dict()
    whole = UNet2DConditionModel.from_pretrained(tmp_path / "pipe", subfolder="unet").state_dict()
    assert alone.keys() == whole.keys()
    assert all(torch.equal(alone[k], whole[k]) for k in alone)


def test_bad_thread_counts_are_refused_by_name(capsys):
    with pytest.raises(SystemExit) as refused:
        main(["scaling", "--threads", "8,0"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "--threads" in err and "'8,0'" in err


@pytest.mark.slow
def test_bench_scaling_writes_its_section(tmp_path, capsys):
    out = report_beside_another(tmp_path)
    command = ["scaling", "--tiny", "--threads", "1", "--repeats", "1", "--models-dir", str(tmp_path / "models"),
               "--out", str(out)]
    assert main(command) == 0
    report = out.read_text()
    assert "<!-- bench:queue -->\nqueue figures\n<!-- /bench:queue -->" in report  # another section, left alone
    raw = json.loads((out.parent / "bench-scaling.json").read_text())
    assert raw["tiny"] is True and raw["repeats"] == 1
    for row in raw["rows"].values():
        assert all(row[k] > 0 for k in ("full_2", "full_1", "shallow_2", "shallow_1")), row
    # the thread count asked for, and the whole machine's for the side-by-side comparison
    cpus = scaling.usable_cpus()
    assert sorted(map(int, raw["rows"])) == sorted({1, cpus})
    part = report[report.index("<!-- bench:scaling -->"):report.index("<!-- /bench:scaling -->")]
    lines = [line for line in part.splitlines() if re.match(r"\| \d+ \|", line)]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert sorted(int(row[0]) for row in rows) == sorted({1, cpus})
    for row in rows:  # threads | batch 2 s | batch 1 s | split bound | shallow 2 (share) | shallow 1 (share) | both
        figures = raw["rows"][row[0]]
        assert len(row) == 7 and re.fullmatch(r"[0-9.]+×", row[3]) and re.fullmatch(r"[0-9.]+×", row[6]), row
        assert float(row[1]) == round(figures["full_2"], 3) and float(row[2]) == round(figures["full_1"], 3), row
        assert float(row[3][:-1]) == round(scaling.split_bound(figures), 2), row
        assert all(re.fullmatch(r"[0-9.]+ \(\d+ %\)", row[i]) for i in (4, 5)), row
    if cpus >= 2:
        pair = raw["side_by_side"]
        assert pair["threads"] == cpus // 2 and len(pair["batch_1"]) == 2 and min(pair["batch_1"]) > 0
        assert all(f"{seconds:.3f}" in part for seconds in pair["batch_1"])
    stdout = capsys.readouterr().out
    assert all(f"{threads} thread(s)" in stdout for threads in raw["rows"]) and f"written to {out}" in stdout
    # built once: a second run reuses the UNet's IR
    built = (tmp_path / "models" / "tiny" / "inpaint-unet" / "unet.xml").stat().st_mtime
    assert main(command) == 0
    assert (tmp_path / "models" / "tiny" / "inpaint-unet" / "unet.xml").stat().st_mtime == built
