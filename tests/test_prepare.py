"""``zoomq prepare``: manifest, model-kind detection, determinism, and every failure it must report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.cli import run_cli
from zoomq.errors import ModelError
from zoomq.model import manifest as mf
from zoomq.model_prep.detect import detect
from zoomq.model_prep.prepare import prepare_random


def test_manifest_describes_the_model_and_hashes_every_file(tiny_t2i):
    m = mf.read(tiny_t2i)
    assert m.data["kind"]["task"] == "text-to-image"
    assert m.data["kind"]["prediction_type"] == "epsilon"
    assert m.data["kind"]["native_size"] == 256
    assert m.data["kind"]["latent_channels"] == 4
    assert m.data["source"].startswith("tiny:")
    assert set(m.data["versions"]) >= {"zoomq", "openvino", "diffusers"}
    for part in mf.IR_PARTS:
        assert f"{part}.xml" in m.data["files"] and f"{part}.bin" in m.data["files"]
    assert "scheduler/scheduler_config.json" in m.data["files"]
    for name, digest in m.data["files"].items():
        assert mf.sha256_file(tiny_t2i / name) == digest
    m.verify_files()


def test_verify_files_finds_a_changed_file(tiny_t2i, tmp_path):
    copy = shutil.copytree(tiny_t2i, tmp_path / "copy", ignore=shutil.ignore_patterns("diffusers"))
    with open(copy / "unet.bin", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError, match="unet.bin"):
        mf.read(copy).verify_files()


def test_inpainting_model_is_detected_from_its_config(tiny_inpaint):
    kind = mf.read(tiny_inpaint).kind
    assert kind["task"] == "inpainting" and kind["unet_in_channels"] == 9


def test_same_command_gives_same_weights(tiny_t2i, tmp_path):
    """Weights are identical; the IR's XML may differ in auto-generated node names only."""
    again = prepare_random(tmp_path / "again", full=False)
    first = mf.read(tiny_t2i).data["files"]
    weights = [name for name in first if name.endswith(".bin")]
    assert len(weights) == 5  # the four parts and DeepCache's shallow UNet (unet_shallow_0)
    assert {n: again.data["files"][n] for n in weights} == {n: first[n] for n in weights}
    for sub in ("unet", "vae", "text_encoder"):
        for f in (tiny_t2i / "diffusers" / sub).glob("*.safetensors"):
            assert mf.sha256_file(f) == mf.sha256_file(tmp_path / "again" / "diffusers" / sub / f.name)


def test_v_prediction_is_selectable(tmp_path):
    prepare_random(tmp_path / "v", full=False, prediction_type="v_prediction")
    assert mf.read(tmp_path / "v").kind["prediction_type"] == "v_prediction"


@pytest.fixture
def config_copy(tiny_t2i, tmp_path) -> Path:
    """The miniature model's diffusers configs without weights: enough for detection."""
    src = tiny_t2i / "diffusers"
    dst = tmp_path / "configs"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    return dst


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_detect_rejects_unsupported_architectures(config_copy):
    assert detect(config_copy).task == "text-to-image"
    _edit(config_copy / "unet" / "config.json", in_channels=5)
    with pytest.raises(ModelError, match="5 input channels"):
        detect(config_copy)
    _edit(config_copy / "unet" / "config.json", in_channels=4)
    _edit(config_copy / "model_index.json", text_encoder_2=["transformers", "CLIPTextModelWithProjection"])
    with pytest.raises(ModelError, match="SDXL"):
        detect(config_copy)


def test_prepare_errors_are_one_clear_line(config_copy, tiny_t2i, tmp_path, capsys):
    # not a diffusers folder
    code, _, err = run_cli("prepare", "--model", tmp_path, "--out", tmp_path / "o1", capsys=capsys)
    assert code == 2 and "not a diffusers pipeline folder" in err and len(err.strip().splitlines()) == 1
    # unsupported architecture
    _edit(config_copy / "unet" / "config.json", in_channels=7)
    code, _, err = run_cli("prepare", "--model", config_copy, "--out", tmp_path / "o2", capsys=capsys)
    assert code == 2 and "unsupported architecture" in err
    # an output folder that holds another model: refused, and the model there is untouched
    before = (tiny_t2i / mf.MANIFEST).read_bytes()
    code, _, err = run_cli("prepare", "--tiny", "--inpainting", "--out", tiny_t2i, capsys=capsys)
    assert code == 1 and "already holds another model" in err
    assert (tiny_t2i / mf.MANIFEST).read_bytes() == before
    # a non-empty folder that is no model
    (tmp_path / "o3").mkdir()
    (tmp_path / "o3" / "notes.txt").write_text("mine")
    code, _, err = run_cli("prepare", "--tiny", "--out", tmp_path / "o3", capsys=capsys)
    assert code == 1 and "not empty" in err
    # the same model again is a no-op
    code, out, _ = run_cli("prepare", "--tiny", "--out", tiny_t2i, capsys=capsys)
    assert code == 0 and "nothing to do" in out


def test_hub_id_without_network_says_what_to_do(tmp_path):
    """A real attempt against the hub (no network here): one line, non-zero exit, a way out."""
    env = {"HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin", "HF_HUB_ETAG_TIMEOUT": "5",
           "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "zoomq", "prepare", "--model", "stabilityai/stable-diffusion-2-1",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "cannot fetch it from the Hugging Face hub" in last and "--model DIR" in last
    assert not (tmp_path / "out").exists()
    print(f"hub failure reported after {time.monotonic() - started:.1f} s")


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB filesystem (tmpfs), to fill up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.root
def test_full_disk_leaves_no_half_written_model(small_disk, tiny_t2i, capsys):
    # checked up front for a folder of known size
    code, _, err = run_cli("prepare", "--model", tiny_t2i / "diffusers", "--out", small_disk / "m", capsys=capsys)
    assert code == 1 and "not enough disk space" in err
    # and caught when the disk fills while writing (the miniature builder writes ~10 MiB)
    code, _, err = run_cli("prepare", "--tiny", "--out", small_disk / "m", capsys=capsys)
    assert code == 1 and "no space left" in err
    assert list(small_disk.iterdir()) == []


def test_int8_weights_are_smaller_and_render(tmp_path, tiny_t2i):
    from zoomq.render.pipeline import Renderer
    from zoomq.render.request import RenderRequest

    int8 = prepare_random(tmp_path / "int8", full=False, weights="int8")
    assert int8.data["weights"] == "int8"
    size = (tmp_path / "int8" / "unet.bin").stat().st_size
    fp16 = (tiny_t2i / "unet.bin").stat().st_size
    assert size < 0.75 * fp16
    from support.images import psnr

    request = RenderRequest("a castle", steps=4, seed=1)
    figure = psnr(Renderer(tmp_path / "int8").render(request).pixels, Renderer(tiny_t2i).render(request).pixels)
    print(f"int8 weights: unet.bin {size / fp16:.2f}x of fp16, PSNR {figure:.1f} dB against fp16 weights")
    assert figure > 20


def test_int8_hybrid_quantizes_the_unet_calibrated_on_itself(tiny_inpaint, tiny_inpaint_int8_hybrid):
    import collections

    import openvino as ov
    from PIL import Image

    from support.images import psnr
    from zoomq.render.pipeline import Renderer
    from zoomq.render.request import RenderRequest

    hybrid = mf.read(tiny_inpaint_int8_hybrid)
    assert hybrid.data["weights"] == "int8-hybrid"
    hybrid.verify_files()  # raises unless the hashes were taken after quantization
    ops = collections.Counter(op.get_type_name() for op in ov.Core().read_model(hybrid.folder / "unet.xml").get_ops())
    assert ops["FakeQuantize"] >= ops["Convolution"] > 0  # activations and weights of convolutions
    vae_decoder = ov.Core().read_model(hybrid.folder / "vae_decoder.xml")
    vae = collections.Counter(op.get_type_name() for op in vae_decoder.get_ops())
    assert vae["FakeQuantize"] == 0  # only the UNet is quantized

    canvas, mask = Image.new("RGB", (256, 256), "gray"), Image.new("L", (256, 256), 255)
    request = RenderRequest("a door", steps=8, seed=3, init_image=canvas, mask=mask, strength=1.0)
    figure = psnr(Renderer(hybrid.folder).render(request).pixels, Renderer(tiny_inpaint).render(request).pixels)
    print(f"int8-hybrid UNet: PSNR {figure:.1f} dB against fp16 weights (miniature inpainting model, f32)")
    assert figure > 30


def test_unet_feed_forward_projects_value_and_gate_apart_with_the_same_numbers(tiny_t2i):
    import copy

    import openvino as ov
    import torch
    from diffusers import UNet2DConditionModel

    from zoomq.model_prep.export import ExportUNet

    unet = UNet2DConditionModel.from_pretrained(tiny_t2i / "diffusers", subfolder="unet").eval()
    split = ExportUNet(copy.deepcopy(unet))
    g = torch.Generator().manual_seed(3)
    sample, text = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        ours = split(sample, torch.tensor(500.0), text)
        theirs = unet(sample, torch.tensor(500.0), text, return_dict=False)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    ops = {op.get_type_name() for op in ov.Core().read_model(tiny_t2i / "unet.xml").get_ops()}
    assert "MatMul" in ops and "VariadicSplit" not in ops and "Split" not in ops


def test_a_model_from_an_older_conversion_is_prepared_again(tiny_t2i, tmp_path):
    out = shutil.copytree(tiny_t2i, tmp_path / "model")  # what prepare_random(out, full=False) builds
    first = mf.read(out)
    assert first.data["conversion"] >= 2
    mf.write(out, {**{k: v for k, v in first.data.items() if k != "format"}, "conversion": 1})
    said: list[str] = []
    again = prepare_random(out, full=False, report=said.append)
    assert any("older zoomq conversion" in line for line in said)
    assert again.data["conversion"] == first.data["conversion"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left beside it
    said.clear()
    prepare_random(out, full=False, report=said.append)
    assert any("nothing to do" in line for line in said)
