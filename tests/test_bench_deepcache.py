"""`python -m benchmarks deepcache` end to end on the miniature models: every figure in its own
process, the report section written beside the others', its ratios against interval 1 and the raw
figures; checked by the figures and the table's shape, not the wording."""

from __future__ import annotations

import json
import re

import pytest

from benchmarks.__main__ import main
from benchmarks.deepcache_gain import INTERVALS, bound, ratio
from support.cli import report_beside_another


def parsed(pattern: str, cell: str) -> tuple[float, ...]:
    """The figures of ``cell``, which must match ``pattern`` whole."""
    found = re.fullmatch(pattern, cell)
    assert found, (pattern, cell)
    return tuple(float(x) for x in found.groups())


@pytest.mark.slow
def test_bench_deepcache_writes_its_section(tmp_path, capsys, bench_models):
    out = report_beside_another(tmp_path)
    models = bench_models(tmp_path / "models", "tiny-t2i", "tiny-inpaint")
    assert main(["deepcache", "--tiny", "--models-dir", str(models), "--out", str(out)]) == 0
    report = out.read_text()
    assert "<!-- bench:queue -->\nqueue figures\n<!-- /bench:queue -->" in report  # another section, left alone
    raw = json.loads((out.parent / "bench-deepcache.json").read_text())
    assert raw["tiny"] is True and raw["repeats"] == 1 and raw["steps"] == 4 and raw["size"] == 256
    m = raw["medians"]
    assert 0 < m["unet_shallow"] < m["unet_full"] and 0 < m["shallow_share"] < 1
    assert all(m[f"{w}_{n}"] > 0 for w in ("t2i", "keyframe") for n in INTERVALS)

    part = report[report.index("<!-- bench:deepcache -->"):report.index("<!-- /bench:deepcache -->")]
    assert f"**{100 * m['shallow_share']:.0f} %**" in part  # the shallow share, in bold
    lines = part.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| work |"))
    assert lines[head].count("|") == len(INTERVALS) + 2 and lines[head + 1].startswith("|---|")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[head + 2:head + 5]]
    assert all(len(row) == len(INTERVALS) + 1 for row in rows), rows
    for row, work in zip(rows, ("t2i", "keyframe")):  # seconds (ratio to interval 1)
        cells = [parsed(r"([0-9.]+) s \(([0-9.]+)×\)", cell) for cell in row[1:]]
        assert [c[0] for c in cells] == [round(m[f"{work}_{n}"], 2) for n in INTERVALS], row
        assert [c[1] for c in cells] == [round(ratio(m, work, n), 2) for n in INTERVALS], row
        assert cells[0][1] == 1.0
    bounds = [parsed(r"([0-9.]+)×", cell)[0] for cell in rows[2][1:]]
    assert bounds == [round(bound(m["shallow_share"], n), 2) for n in INTERVALS] and bounds[0] == 1.0

    stdout = capsys.readouterr().out
    assert f"{ratio(m, 't2i', 3):.2f}x" in stdout and f"written to {out}" in stdout
