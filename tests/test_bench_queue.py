"""`zoomq bench queue` (the one benchmark in the package) and the line between the package and
benchmarks/: `zoomq bench` points to the benchmarks that moved, the package imports neither them nor
matplotlib, and the benchmarks' stage (``Fleet``) hands its Redis over explicitly."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.cli import report_beside_another, run_cli
from zoomq.config import settings
from zoomq.node.processes import Fleet

SRC = Path(__file__).resolve().parent.parent / "src"


def test_zoomq_bench_lists_queue_and_points_to_the_benchmarks(capsys):
    code, out, _ = run_cli("bench", "--help", capsys=capsys)
    assert code == 0 and "{queue}" in out and "python -m benchmarks" in out


def test_a_moved_benchmark_says_where_it_went(capsys):
    code, _, err = run_cli("bench", "render", "--tiny", "--quick", capsys=capsys)
    assert code == 2 and "python -m benchmarks render --tiny --quick" in err


def test_the_zoomq_command_loads_neither_matplotlib_nor_the_benchmarks():
    check = "import sys, zoomq.cli.main; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
            "('matplotlib', 'benchmarks')))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=SRC.parent)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_no_package_module_imports_the_benchmarks():
    found = []
    for path in (SRC / "zoomq").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(SRC)}: {n}" for n in names if n.split(".")[0] in ("benchmarks", "matplotlib")]
    assert found == []


def test_a_fleet_hands_its_redis_over_without_the_environment():
    before = os.environ.get("ZOOMQ_REDIS_URL")
    with Fleet([]) as fleet:
        assert fleet.settings.redis_url == fleet.server.url and fleet.server.client().ping()
        assert os.environ.get("ZOOMQ_REDIS_URL") == before
        folder = fleet.folder
    assert not folder.exists() and os.environ.get("ZOOMQ_REDIS_URL") == before


@pytest.mark.slow
def test_bench_queue_writes_its_section(tmp_path, capsys, bench_models):
    bench_models(settings().cache_dir / "bench-models", "tiny-t2i", "tiny-inpaint")  # where it looks for them
    out = report_beside_another(tmp_path)
    out.write_text(out.read_text().replace("bench:queue", "bench:other"))  # another section to leave alone
    before = os.environ.get("ZOOMQ_REDIS_URL")
    code, stdout, err = run_cli("bench", "queue", "--quick", "--out", str(out), capsys=capsys)
    assert code == 0, err
    assert os.environ.get("ZOOMQ_REDIS_URL") == before
    report = out.read_text()
    assert "<!-- bench:other -->\nqueue figures\n<!-- /bench:other -->" in report
    part = report[report.index("<!-- bench:queue -->"):report.index("<!-- /bench:queue -->")]
    lines = part.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| what | figure |"))
    rows = [line for line in lines[head + 2:] if line.startswith("|")]
    assert len(rows) == 6 and all(line.count("|") == 3 for line in rows), rows
    figures = dict(re.findall(r"^(\w+)\s+([0-9.]+)$", stdout, re.M))
    assert set(figures) == {"latency_median_ms", "latency_max_ms", "tiny_jobs_per_s", "one_by_one_jobs_per_s",
                            "zoom_1_worker_s", "two_by_one_jobs_per_s", "zoom_2_workers_s"}
    assert all(float(v) > 0 for v in figures.values()), figures
    assert float(figures["latency_median_ms"]) <= float(figures["latency_max_ms"])


def test_bench_queue_control_plane_writes_its_figures(tmp_path, capsys):
    """The control-plane part at two small counts (the real run is by hand: 200 and 20,000 jobs)."""
    out = report_beside_another(tmp_path)
    code, stdout, err = run_cli("bench", "queue", "--control-plane", "--jobs", "60,150", "--clients", "2",
                                "--submits", "6", "--samples", "3", "--out", str(out), capsys=capsys)
    assert code == 0, err
    report = out.read_text()
    assert "<!-- bench:queue -->\nqueue figures\n<!-- /bench:queue -->" in report  # another section, kept
    start, end = "<!-- bench:queue-control-plane -->", "<!-- /bench:queue-control-plane -->"
    part = report[report.index(start):report.index(end)]
    assert "| 60 queued | 150 queued |" in part
    figures = {k: float(v) for k, v in re.findall(r"^(\w+)\s+([0-9.]+)$", stdout, re.M)}
    for path in ("health", "metrics", "overview", "list", "status"):
        assert figures[f"{path}_60_median_ms"] <= figures[f"{path}_60_p95_ms"]
        assert figures[f"{path}_60_commands"] == figures[f"{path}_150_commands"] > 0, path  # the same at both
    assert figures["submit_60_per_s"] > 0 and figures["submit_150_commands"] > 0
    assert figures["queued_job_bytes"] > figures["queued_job_record_bytes"] > 0
    code, _, err = run_cli("bench", "queue", "--control-plane", "--jobs", "200,x", capsys=capsys)
    assert code == 2 and "--jobs '200,x'" in err
