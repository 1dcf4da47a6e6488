"""The fleet soak: 16 real workers on the miniature models, jobs of both kinds, workers killed at
random mid-piece and Redis restarted under them — no job lost, no piece completed twice, the queue
drained, /metrics agreeing with the records (``support.soak``). The suite runs a small one; the
full one (``-m soak``, ``make soak``) runs thousands of jobs and prints the Redis figures that
docs/deploy.md's capacity arithmetic uses."""

from __future__ import annotations

import pytest

from support import soak


def _report(result: soak.Soak) -> None:
    print(f"\nkilled {len(result.killed)} workers: {', '.join(result.killed)}")
    for name, value in result.figures.items():
        print(f"{name}: {value:.1f}")
    print("top commands:", ", ".join(f"{name} {calls}" for name, calls in result.top_commands))


def test_a_small_fleet_loses_nothing(tmp_path, tiny_t2i, tiny_inpaint):
    """The suite's version: 3 workers (16 take minutes to start on 2 cores), 24 jobs, one kill, one restart."""
    result = soak.run(soak.Plan(workers=3, images=20, zooms=4, kills=1, visibility=6), tmp_path,
                      [tiny_t2i, tiny_inpaint], timeout=300)
    _report(result)
    assert len(result.killed) == 1
    assert not result.problems, "\n".join(result.problems)


@pytest.mark.soak
@pytest.mark.timeout(4 * 3600)
def test_the_fleet_soak(tmp_path, tiny_t2i, tiny_inpaint):
    result = soak.run(soak.Plan(workers=16, images=1800, zooms=200, kills=10, idle_seconds=60), tmp_path,
                      [tiny_t2i, tiny_inpaint], timeout=3 * 3600)
    _report(result)
    assert len(result.killed) == 10
    assert not result.problems, "\n".join(result.problems)
