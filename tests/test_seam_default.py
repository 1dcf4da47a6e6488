"""The default seam fits every size the other options allow: where size and mask width leave less
room than 16 px, validation narrows it to the most that fits and says so in a warning that travels
with the job into the sidecar; a seam someone gave must still fit or is refused."""

from __future__ import annotations

import json

import pytest

from support.cli import run_cli
from zoomq.errors import InvalidParameter
from zoomq.zoom.settings import DEFAULT_SEAM, ZoomSettings, validate


@pytest.mark.parametrize("size, mask_width, narrowed", [(64, 8, 12), (64, 16, 8), (64, 24, 4), (64, 31, 0),
                                                          (72, 16, 10)])
def test_default_seam_narrows_to_the_most_that_fits_with_a_warning(size, mask_width, narrowed):
    settings = validate(ZoomSettings("x", size=size, mask_width=mask_width))
    assert settings.seam == narrowed and type(settings.seam) is int
    [warning] = settings.warnings
    assert warning.startswith("seam: ") and f"default {DEFAULT_SEAM} px" in warning
    assert f"using {narrowed} px" in warning and f"from 0 to {narrowed}" in warning


@pytest.mark.parametrize("size, mask_width", [(96, 16), (128, 32), (512, 128)])
def test_default_seam_that_fits_is_kept_silently(size, mask_width):
    settings = validate(ZoomSettings("x", size=size, mask_width=mask_width))
    assert settings.seam == 16 and settings.warnings == ()


def test_none_means_the_default_too():
    """``--seam`` left out (None) and the field left out are the same request."""
    assert validate(ZoomSettings("x", size=64, mask_width=16, seam=None, seed=1)) == \
        validate(ZoomSettings("x", size=64, mask_width=16, seed=1))


@pytest.mark.parametrize("seam", [16, 9, -1])
def test_a_given_seam_that_does_not_fit_is_still_refused(seam):
    with pytest.raises(InvalidParameter) as e:
        validate(ZoomSettings("x", size=64, mask_width=16, seam=seam))
    assert e.value.param == "seam" and e.value.value == seam and "between 0 and 8" in e.value.rule


def test_a_given_seam_that_fits_is_kept_silently():
    settings = validate(ZoomSettings("x", size=64, mask_width=16, seam=8))
    assert settings.seam == 8 and settings.warnings == ()


def test_warnings_travel_with_the_job_and_validating_again_adds_none():
    """The producer stores ``to_dict()`` as JSON; the worker rebuilds it with ``from_dict``."""
    settings = validate(ZoomSettings("x", size=64, mask_width=16))
    again = ZoomSettings.from_dict(json.loads(json.dumps(settings.to_dict())))
    assert again == settings and again.warnings == settings.warnings
    assert validate(again) == settings


def test_cli_refuses_a_given_seam_that_does_not_fit(tmp_path, capsys):
    code, _, err = run_cli("render", "zoom", "x", "--model", tmp_path / "unused", "--size", 64, "--mask-width", 16,
                           "--seam", 16, "--out", tmp_path / "z.mp4", capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("zoomq: error: --seam: must be between 0 and 8"), err


def test_render_zoom_at_the_smallest_size_warns_and_records_it(tiny_inpaint, tmp_path, capsys):
    out = tmp_path / "z.mp4"
    code, _, err = run_cli("render", "zoom", "a spiral", "--model", tiny_inpaint, "--size", 64, "--mask-width", 16,
                           "--keyframes", 2, "--interpolation-frames", 2, "--steps", 2, "--seed", 1, "--out", out,
                           capsys=capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("zoomq: warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith("zoomq: warning: --seam: the default 16 px"), err
    assert "using 8 px" in warnings[0]
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["settings"]["seam"] == 8
    assert len(sidecar["warnings"]) == 1 and "using 8 px" in sidecar["warnings"][0]
    assert sidecar["settings"]["warnings"] == sidecar["warnings"]
