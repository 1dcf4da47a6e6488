"""A benchmark's section of docs/benchmarks.md, written leaving the other sections as they are, and
the machine the figures were measured on (``zoomq bench queue`` and the benchmarks in benchmarks/)."""

from __future__ import annotations

import os
import re
from pathlib import Path

HEADER = "# Benchmarks\n\nFigures measured by zoomq's own benchmarks; each section says how to rerun it.\n"


def machine() -> str:
    """``2 vCPU AMD EPYC (family 26 model 2, AVX-512 BF16), 24 GiB``: CPUs, their kind and the memory."""
    from zoomq.render.precision import cpu_label

    cpu = cpu_label()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} vCPU {cpu}, {memory:.0f} GiB"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the section between ``<!-- bench:NAME -->`` markers (or append it)."""
    path = Path(path)
    text = path.read_text() if path.exists() else HEADER
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
