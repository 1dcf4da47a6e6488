"""Running ``zoomq`` commands from tests: in this process, or in a child whose peak memory is measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(*args: object, capsys=None) -> tuple[int, str, str]:
    """Run ``zoomq ARGS`` (each one as ``str`` makes it) in this process; returns (exit code, stdout, stderr)."""
    from zoomq.cli.main import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own errors
        assert isinstance(e.code, int), e.code
        code = e.code
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


def peak_rss_of_zoomq(*args: object, timeout: float = 1800) -> int:
    """Run ``zoomq ARGS`` in a child process; returns its peak RSS in bytes (fails on non-zero exit)."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(proc.stderr[-3000:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
        "sys.exit(proc.returncode)\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "zoomq", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1])


def report_beside_another(tmp_path: Path) -> Path:
    """A ``docs/benchmarks.md`` holding another benchmark's section ("queue figures"), which a
    benchmark command writing its own section must leave as it is."""
    out = tmp_path / "docs" / "benchmarks.md"
    out.parent.mkdir()
    out.write_text("# Benchmarks\n\n<!-- bench:queue -->\nqueue figures\n<!-- /bench:queue -->\n")
    return out
