"""The worker benchmarks end to end on the miniature model, for their harness and their figures'
shape (``python -m benchmarks.cold_start --tiny``, ``python -m benchmarks.slots --tiny``): real
``zoomq worker`` processes on a private Redis; the times themselves belong to a quiet machine."""

from __future__ import annotations

import json

import pytest

from benchmarks import cold_start, slots


@pytest.mark.slow
def test_cold_start_times_each_launch_from_its_log_and_its_job(tmp_path, capsys, bench_models):
    models = bench_models(tmp_path / "models", "tiny-t2i")
    out = tmp_path / "cold.json"
    assert cold_start.main(["--tiny", "--repeats", "1", "--models-dir", str(models), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    launches = result["launches"]
    assert {name: len(runs) for name, runs in launches.items()} == {"cold": 1, "storing": 1, "warm": 1}
    for launch in (runs[0] for runs in launches.values()):
        t = launch["timeline"]
        # the warm-up begins after Python, Celery and the fork; the first step after the warm-up began
        assert 0 < t["warm-up begins"] < launch["denoise_start"] < launch["first_step"] < 300
        assert t["warm-up begins"] < t["model compiled"] and t["warm-up begins"] < t["render core imported"]
        assert launch["compile"] > 0 and launch["import"] > 0
    warm = launches["warm"][0]
    assert result["warm_median_denoise_start"] == warm["denoise_start"]
    printed = capsys.readouterr().out
    assert printed.count("\n| cold |") == 1 and "| warm |" in printed


@pytest.mark.slow
def test_slots_against_processes_measures_each_shape(tmp_path, bench_models):
    models = bench_models(tmp_path / "models", "tiny-t2i")
    out = tmp_path / "slots.json"
    assert slots.main(["--tiny", "--jobs", "2", "--steps", "2", "--models-dir", str(models), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["figures"]
    assert set(figures) == {"1x2", "2"}
    for shape, f in figures.items():
        assert f["shape"] == shape and f["jobs"] == 2 and f["jobs_per_min"] > 0
        assert 100 * 2**20 < f["pss_after"] <= f["pss_peak"]
