"""`zoomq bench split` end to end on the miniature inpainting model: real workers, one against two
sharing each keyframe's guided steps, and its section of the report."""

from __future__ import annotations

import re

import pytest

from conftest import report_beside_another, run_cli


@pytest.mark.slow
def test_bench_split_writes_its_section(tmp_path, capsys):
    out = report_beside_another(tmp_path)
    code, stdout, _ = run_cli("bench", "split", "--tiny", "--steps", "6", "--frames", "3",
                              "--models-dir", str(tmp_path / "models"), "--out", str(out), capsys=capsys)
    assert code == 0, stdout
    report = out.read_text()
    assert "queue figures" in report and "<!-- bench:split -->" in report
    assert "these figures check the benchmark itself" in report
    assert re.search(r"two workers sharing its guided steps \| [0-9.]+ s \([0-9.]+×", report), report
    assert re.search(r"DeepCache interval 3 \| [0-9.]+ s \([0-9.]+×; goal ≤ 0.4×", report), report
    # both keyframes of the zoom were split, without DeepCache and with it
    assert "| keyframes split / runs, without DeepCache; with | 2 / 1; 2 / 1 |" in report
    share = float(re.search(r"\(([0-9.]+) % of the keyframe", report).group(1))
    assert 0 < share < 100
    psnr = re.search(r"split against one worker \(keyframe 0 / 1\) \| (\S+) / (\S+) dB", report)
    assert all(p == "inf" or float(p) >= 40 for p in psnr.groups()), psnr.groups()
    cached = re.search(r"DeepCache 3 against one worker without \(keyframe 0 / 1\) \| (\S+) / (\S+) dB", report)
    assert all(p != "inf" for p in cached.groups()), cached.groups()  # caching does change the picture
    one, two = (float(x) for x in re.search(r"one worker, default \| ([0-9.]+) s \|.*\n.*DeepCache 3 \| "
                                            r"([0-9.]+) s \(", report).groups())
    assert one > 0 and two > 0
