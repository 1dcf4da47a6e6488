"""`zoomq bench scaling` on the miniature UNet: its report section and raw figures, its thread
counts, its bounds, and the UNet-only builder's weights being the whole pipeline builder's."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import report_beside_another, run_cli
from zoomq.bench import scaling


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
    code, _, err = run_cli("bench", "scaling", "--threads", "8,0", capsys=capsys)
    assert code == 2 and "--threads" in err and "'8,0'" in err


@pytest.mark.slow
def test_bench_scaling_writes_its_section(tmp_path, capsys):
    out = report_beside_another(tmp_path)
    code, stdout, err = run_cli("bench", "scaling", "--tiny", "--threads", "1", "--repeats", "1",
                                "--models-dir", tmp_path / "models", "--out", out, capsys=capsys)
    assert code == 0, err
    report = out.read_text()
    assert "queue figures" in report and "<!-- bench:scaling -->" in report
    assert "these figures check the benchmark itself" in report
    rows = [line for line in report.splitlines() if re.match(r"\| \d+ \|", line)]
    # the thread count asked for, and the whole machine's for the side-by-side comparison
    cpus = scaling.usable_cpus()
    assert sorted(int(r.split("|")[1]) for r in rows) == sorted({1, cpus})
    assert all(r.count("×") == 2 and r.count("%") == 2 for r in rows), rows
    raw = json.loads((out.parent / "bench-scaling.json").read_text())
    for row in raw["rows"].values():
        assert all(row[k] > 0 for k in ("full_2", "full_1", "shallow_2", "shallow_1")), row
    if cpus >= 2:
        pair = raw["side_by_side"]
        assert pair["threads"] == cpus // 2 and len(pair["batch_1"]) == 2 and min(pair["batch_1"]) > 0
        assert "Inside one node" in report
    assert "split bound" in stdout
    # built once: a second run reuses the UNet's IR
    built = (tmp_path / "models" / "tiny" / "inpaint-unet" / "unet.xml").stat().st_mtime
    assert run_cli("bench", "scaling", "--tiny", "--threads", "1", "--repeats", "1",
                   "--models-dir", tmp_path / "models", "--out", out, capsys=capsys)[0] == 0
    assert (tmp_path / "models" / "tiny" / "inpaint-unet" / "unet.xml").stat().st_mtime == built
