"""Write one benchmark's section of docs/benchmarks.md, leaving the other sections as they are."""

from __future__ import annotations

import os
import re
from pathlib import Path


def machine() -> str:
    from zoomq.render.precision import cpu_label

    cpu = cpu_label()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} vCPU {cpu}, {memory:.0f} GiB"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the section between ``<!-- bench:NAME -->`` markers (or append it)."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n\nFigures measured by zoomq's own benchmarks; each section says how to rerun it.\n"
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
