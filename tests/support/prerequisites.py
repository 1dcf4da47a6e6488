"""Tests that need something beyond the Python environment (a pytest plugin, see conftest.py).

``@pytest.mark.browser``: Debian's chromium driven by playwright; ``@pytest.mark.root``: root, for
network namespaces and tmpfs mounts. Where the prerequisite is missing, such a test skips before its
fixtures start anything, saying what is missing; the end of the run counts those skips, so none goes
unnoticed. ``-m browser``, ``-m root`` or ``-m "not browser"`` select them.
"""

from __future__ import annotations

import functools
import os
from collections import Counter

import pytest

from support import browser

NEEDS = {"browser": "Debian's chromium and playwright", "root": "root (network namespaces, tmpfs mounts)"}


@functools.cache
def missing(marker: str) -> str | None:
    """Why tests marked ``marker`` cannot run here, or None when they can."""
    if marker == "browser":
        return browser.missing()
    if marker == "root" and os.geteuid() != 0:
        return "needs root (network namespaces, tmpfs mounts); CI runs as root"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in NEEDS:
            reason = item.get_closest_marker(marker) and missing(marker)
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"{marker}: {reason}"))


def pytest_terminal_summary(terminalreporter):
    """One line counting the tests skipped for a missing prerequisite, by marker, with the reasons."""
    counts: dict[str, Counter] = {marker: Counter() for marker in NEEDS}
    for report in terminalreporter.stats.get("skipped", []):
        marker = next((m for m in NEEDS if m in report.keywords), None)
        if marker is not None:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            counts[marker][reason.removeprefix("Skipped: ").removeprefix(f"{marker}: ")] += 1
    parts = [f"{sum(c.values())} {marker} ({'; '.join(c)})" for marker, c in counts.items() if c]
    if parts:
        terminalreporter.write_sep("=", "skipped for a missing prerequisite: " + ", ".join(parts), yellow=True)
