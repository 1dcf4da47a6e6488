"""An unexpected exception (a bug) in a CLI command: one line on stderr that says what failed and
where, the full traceback kept in a file, exit code 1; ``zoomq --debug`` shows the traceback in place.

The failure is real, not mocked: a model folder whose manifest has the right format but no "kind"
gets past the manifest check and breaks the renderer with a KeyError (a damaged or hand-edited
zoomq.json). Should the manifest check ever catch this, pick another real trigger here.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile

import pytest

from support.cli import run_cli
from zoomq.model.manifest import FORMAT, MANIFEST

LINE = re.compile(r"zoomq: internal error in zoomq render image: KeyError: 'kind' \(at manifest\.py:\d+[^)]*\); "
                  r"the full traceback is in (?P<path>.+); rerun as `zoomq --debug render image \.\.\.` to see it here")


@pytest.fixture
def damaged_model(tmp_path):
    folder = tmp_path / "damaged-model"
    folder.mkdir()
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT}))
    return folder


@pytest.fixture
def zoomq_log_level():
    """``--debug`` turns the zoomq logger to DEBUG in this process: put it back afterwards."""
    logger = logging.getLogger("zoomq")
    level = logger.level
    yield logger
    logger.setLevel(level)


def render_damaged(model, tmp_path, capsys, *before: str) -> tuple[int, str]:
    code, _, err = run_cli(*before, "render", "image", "a lake", "--model", model, "--out", tmp_path / "a.png",
                           capsys=capsys)
    return code, err


def test_unexpected_error_is_one_line_and_the_traceback_is_in_a_file(damaged_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ZOOMQ_CACHE_DIR", str(tmp_path / "cache"))
    code, err = render_damaged(damaged_model, tmp_path, capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    match = LINE.fullmatch(lines[0])
    assert match, lines[0]
    path = tmp_path / "cache" / "crash" / match["path"].rsplit("/", 1)[-1]
    assert str(path) == match["path"] and path.is_file()
    report = path.read_text()
    assert "command: zoomq render image 'a lake' --model" in report
    assert "Traceback (most recent call last)" in report and "KeyError: 'kind'" in report
    assert "manifest.py" in report and "pipeline.py" in report  # the whole way, not just the last line
    assert not (tmp_path / "a.png").exists()


def test_debug_shows_the_traceback_here(damaged_model, tmp_path, capsys, monkeypatch, zoomq_log_level):
    monkeypatch.setenv("ZOOMQ_CACHE_DIR", str(tmp_path / "cache"))
    code, err = render_damaged(damaged_model, tmp_path, capsys, "--debug")
    assert code == 1
    assert err.startswith("Traceback (most recent call last)") and "KeyError: 'kind'" in err
    assert err.strip().splitlines()[-1].startswith("zoomq: internal error in zoomq render image: KeyError: 'kind'")
    assert not (tmp_path / "cache" / "crash").exists()  # nothing to keep: it is on the screen
    assert zoomq_log_level.level == logging.DEBUG


@pytest.mark.parametrize("setting, value", [("ZOOMQ_CACHE_DIR", "{file}"), ("ZOOMQ_INFERENCE_PRECISION", "f13")])
def test_traceback_goes_to_the_temp_folder_when_the_cache_cannot_take_it(damaged_model, tmp_path, capsys,
                                                                       monkeypatch, setting, value):
    """A cache dir that is a file, or settings that cannot be read, must not hide the error."""
    (tmp_path / "file").write_text("")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv(setting, value.format(file=tmp_path / "file"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    code, err = render_damaged(damaged_model, tmp_path, capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    saved = list((tmp_path / "tmp").glob("zoomq-crash-*.txt"))
    assert len(saved) == 1 and f"the full traceback is in {saved[0]};" in lines[0]
    assert "KeyError: 'kind'" in saved[0].read_text()


def test_errors_zoomq_raises_on_purpose_stay_as_they_were(tmp_path, capsys):
    code, _, err = run_cli("render", "image", "a lake", "--model", tmp_path / "none", "--out", tmp_path / "a.png",
                           capsys=capsys)
    assert code == 2 and err.startswith("zoomq: error: ") and "internal error" not in err
