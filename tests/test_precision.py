"""What `auto` precision means: the faster of f32 and bf16 on this machine, measured once, kept."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from zoomq.config import settings
from zoomq.render import precision
from zoomq.render.pipeline import Renderer
from zoomq.render.request import RenderRequest


@pytest.fixture
def auto(tmp_path):
    precision._resolved.clear()
    yield replace(settings(), inference_precision="auto", cache_dir=tmp_path)
    precision._resolved.clear()


def test_an_explicit_precision_is_kept_and_nothing_is_measured(auto):
    assert precision.resolve(replace(auto, inference_precision="bf16")) == "bf16"
    assert not (auto.cache_dir / "precision.json").exists()


def test_auto_measures_both_and_takes_the_faster(auto):
    choice = precision.resolve(auto)
    entry = json.loads((auto.cache_dir / "precision.json").read_text())[precision._key(auto)]
    assert entry["choice"] == choice
    if entry["seconds"]:  # a CPU with bf16: both were timed
        f32, bf16 = entry["seconds"]["f32"], entry["seconds"]["bf16"]
        assert f32 > 0 and bf16 > 0
        assert choice == ("bf16" if bf16 < f32 * (1 - precision.MARGIN) else "f32")
    else:
        assert choice == "f32"


def test_the_answer_is_remembered_per_machine(auto):
    first = precision.resolve(auto)
    path = auto.cache_dir / "precision.json"
    known = json.loads(path.read_text())
    other = "bf16" if first == "f32" else "f32"
    known[precision._key(auto)]["choice"] = other  # what an earlier process would have found
    path.write_text(json.dumps(known))
    precision._resolved.clear()
    assert precision.resolve(auto) == other  # read back, not measured again
    assert precision.resolve(replace(auto, threads=1)) in precision.CANDIDATES  # another key: measured
    assert len(json.loads(path.read_text())) == 2


def test_renders_record_the_precision_they_ran_at(auto, tiny_t2i):
    renderer = Renderer(tiny_t2i, auto)
    assert renderer.settings.inference_precision in precision.CANDIDATES
    result = renderer.render(RenderRequest("a tree", steps=2, seed=1))
    assert result.recipe["inference_precision"] == renderer.settings.inference_precision
    assert renderer.settings.ov_cache_dir.name == f"cpu-{renderer.settings.inference_precision}"


def _cpuinfo(tmp_path, family, flags):
    path = tmp_path / f"cpuinfo-{family}"
    processor = f"processor\t: {{}}\nmodel name\t: AMD EPYC\ncpu family\t: {family}\nmodel\t\t: 2\nflags\t\t: {flags}\n"
    path.write_text(processor.format(0) + "\n" + processor.format(1))
    return path


def test_cpus_of_one_model_name_are_told_apart_by_generation_and_matrix_instructions(tmp_path):
    zen4 = precision.cpu_label(_cpuinfo(tmp_path, 25, "fpu avx2 avx512f avx512_bf16"))
    zen5 = precision.cpu_label(_cpuinfo(tmp_path, 26, "fpu avx2 avx512f avx512_bf16"))
    xeon = precision.cpu_label(_cpuinfo(tmp_path, 6, "fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile"))
    assert zen4 == "AMD EPYC (family 25 model 2, AVX-512 BF16)"
    assert zen5 != zen4 and xeon.endswith(", AMX)")
    assert precision.cpu_label(tmp_path / "missing") == precision.cpu_name()  # no cpuinfo: the name alone
