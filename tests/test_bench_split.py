"""`python -m benchmarks split` end to end on the miniature inpainting model: real workers, one
against two sharing each keyframe's guided steps, and its section of the report, checked by its
figures and its table's shape, not its wording."""

from __future__ import annotations

import math
import re

import pytest

from benchmarks.__main__ import main
from support.cli import report_beside_another


def figures(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"\binf\b|\d+(?:\.\d+)?", cell)]


@pytest.mark.slow
def test_bench_split_writes_its_section(tmp_path, capsys, bench_models):
    out = report_beside_another(tmp_path)
    models = bench_models(tmp_path / "models", "tiny-inpaint")
    assert main(["split", "--tiny", "--steps", "6", "--frames", "3", "--models-dir", str(models),
                 "--out", str(out)]) == 0, capsys.readouterr().out
    report = out.read_text()
    assert "<!-- bench:queue -->\nqueue figures\n<!-- /bench:queue -->" in report  # another section, left alone
    part = report[report.index("<!-- bench:split -->"):report.index("<!-- /bench:split -->")]
    lines = part.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| what | figure |"))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[head + 2:] if line.startswith("|")]
    assert len(rows) == 10 and all(len(row) == 2 and figures(row[1]) for row in rows), rows
    assert all(x >= 0 for row in rows for x in figures(row[1])), rows
    seconds = [row for row in rows if re.match(r"[0-9.]+ s\b", row[1])]
    assert len(seconds) == 7, seconds  # keyframes: one worker, two, two with DeepCache; exchange; halves; videos
    timed = [row for row in seconds if row is seconds[0] or "×" in row[1]]  # a keyframe or a video: never 0.00
    assert len(timed) == 4 and all(figures(row[1])[0] > 0 for row in timed), timed
    ratios = [float(x) for row in rows for x in re.findall(r"\(([0-9.]+)×", row[1])]
    assert len(ratios) == 3 and all(0 < r < 100 for r in ratios), ratios  # two keyframe ratios, the video's
    (share,) = [float(x) for row in rows for x in re.findall(r"\(([0-9.]+) %", row[1])]
    assert 0 < share < 100
    # both keyframes of the zoom were split, without DeepCache and with it, in the one run
    (split,) = [row[1] for row in rows if re.fullmatch(r"\d+ / \d+; \d+ / \d+", row[1])]
    assert figures(split) == [2, 1, 2, 1]
    plain, cached = ([p for p in figures(row[1])] for row in rows if row[1].endswith("dB PSNR"))
    assert len(plain) == len(cached) == 2
    assert all(p == math.inf or p >= 40 for p in plain), plain  # the split moves pixels by rounding only
    assert all(math.isfinite(p) for p in cached), cached  # caching does change the picture
    assert f"written to {out}" in capsys.readouterr().out
