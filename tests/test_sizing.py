"""Workers sized to the node: the processes x threads rule on given core and memory figures, the
memory estimate per process, and container limits read from cgroup files."""

from __future__ import annotations

import pytest

from support.cli import run_cli
from zoomq.node import sizing

GiB = 2**30


@pytest.mark.parametrize("cores, free_gib, expected", [
    (16, 62, (4, 4)),   # the measured Xeon: 4 x 4 keeps nearly all of 8 x 2's throughput
    (32, 250, (8, 4)),
    (16, 8, (2, 8)),    # memory holds two 3.4 GiB processes (1 GiB reserved): threads share the cores
    (12, 62, (3, 4)),
    (8, 62, (2, 4)),
    (6, 62, (1, 6)),    # below 8 cores one process takes every core
    (2, 22, (1, 2)),    # this machine: 1 x 2 and 2 x 1 measured level
    (16, 2, (1, 16)),   # not even one fits: still one, with a warning
])
def test_concurrency_rule(cores, free_gib, expected):
    plan = sizing.choose(sizing.Node(cores, free_gib * GiB), int(3.4 * GiB))
    assert (plan.processes, plan.threads) == expected
    assert plan.describe().startswith(f"{expected[0]} process")
    assert ("WARNING" in plan.reason) == (free_gib == 2)


def test_given_processes_or_threads_are_kept_and_the_rest_is_derived():
    node = sizing.Node(16, 62 * GiB)
    assert (lambda p: (p.processes, p.threads))(sizing.choose(node, GiB, processes=8)) == (8, 2)
    assert (lambda p: (p.processes, p.threads))(sizing.choose(node, GiB, threads=2)) == (8, 2)
    assert (lambda p: (p.processes, p.threads))(sizing.choose(node, 10 * GiB, threads=2)) == (6, 2)  # memory
    assert (lambda p: (p.processes, p.threads))(sizing.choose(node, GiB, 3, 5)) == (3, 5)


def test_memory_estimate_per_process(tmp_path):
    """Calibrated on the measured 3.4 GiB of a process holding the full-size model (2.4 GiB of IR, bf16)."""
    model = tmp_path / "m"
    (model / "unet").mkdir(parents=True)
    with open(model / "unet" / "openvino_model.bin", "wb") as f:
        f.truncate(int(2.4 * GiB))
    assert sizing.process_bytes([model], 1.0) == pytest.approx(3.4 * GiB, rel=0.01)
    assert sizing.process_bytes([model], 2.0) == pytest.approx(5.8 * GiB, rel=0.01)  # f32 doubles the weights
    assert sizing.process_bytes([], 1.0) == sizing.ENCODE_BYTES
    assert sizing.weights_factor("auto", {"amx_bf16", "avx512_bf16"}, "GenuineIntel") == 1.0
    assert sizing.weights_factor("auto", {"avx512_bf16"}, "GenuineIntel") == 2.0  # f32 measured faster there
    assert sizing.weights_factor("auto", {"avx512_bf16"}, "AuthenticAMD") == 1.0
    assert sizing.weights_factor("bf16", set(), "") == 1.0


def test_container_limits_bound_the_node(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal: 65000000 kB\nMemAvailable: 60000000 kB\n")
    assert sizing.this_node(tmp_path, cores=16) == sizing.Node(16, 60000000 * 1024)
    cgroup = tmp_path / "sys/fs/cgroup"
    cgroup.mkdir(parents=True)
    (cgroup / "cpu.max").write_text("400000 100000\n")
    (cgroup / "memory.max").write_text(str(12 * GiB))
    (cgroup / "memory.current").write_text(str(2 * GiB))
    node = sizing.this_node(tmp_path, cores=16)
    assert node == sizing.Node(4, 10 * GiB, ("cgroup cpu quota", "cgroup memory limit"))
    assert "by the cgroup cpu quota and cgroup memory limit" in sizing.choose(node, GiB).reason


@pytest.mark.parametrize("value", ["many", "0", "1x0", "2x", "x2", "1x2x3", "-1"])
def test_bad_concurrency_names_the_option(capsys, value):
    code, _, err = run_cli("worker", "--concurrency", value, "--queues", "encode", capsys=capsys)
    assert code == 2 and err.startswith("zoomq: error: --concurrency: must be auto, a whole number")
    assert "PxS" in err


def test_concurrency_with_slots_parses_and_prints_back():
    assert sizing.parse_concurrency("auto") is None
    assert sizing.parse_concurrency("3") == sizing.Concurrency(3, 1)
    assert sizing.parse_concurrency(" 1X4 ") == sizing.Concurrency(1, 4)
    assert [str(sizing.Concurrency(*c)) for c in ((3, 1), (1, 4), (2, 2))] == ["3", "1x4", "2x2"]


def test_slots_share_one_copy_of_the_weights(tmp_path):
    """Each process holds its models once, each slot adds its working memory: 1x2 is estimated
    well under two 1x1 processes, and the one-slot estimate is the measured 3.4 GiB as before."""
    model = tmp_path / "m"
    (model / "unet").mkdir(parents=True)
    with open(model / "unet" / "openvino_model.bin", "wb") as f:
        f.truncate(int(2.4 * GiB))
    one = sizing.process_bytes([model], 1.0)
    two_slots = sizing.process_bytes([model], 1.0, slots=2)
    assert two_slots - one == sizing.SLOT_BYTES
    assert two_slots < 0.7 * 2 * one


@pytest.mark.parametrize("cores, free_gib, slots, expected", [
    (2, 22, 2, (1, 2, 1)),     # this machine: one process, two slots of one thread
    (16, 62, 4, (1, 4, 4)),    # 16 cores in 1 x 4 x 4
    (32, 250, 2, (4, 2, 4)),   # 4 threads a slot: cores / (4 x 2) processes
    (16, 5.5, 2, (1, 2, 8)),   # memory holds one process of two slots: threads share the cores out
])
def test_the_rule_can_plan_slots(cores, free_gib, slots, expected):
    per_process = sizing.BASE_BYTES + slots * sizing.SLOT_BYTES + int(2.4 * GiB)
    plan = sizing.choose(sizing.Node(cores, int(free_gib * GiB)), per_process, slots=slots)
    assert (plan.processes, plan.slots, plan.threads) == expected
    assert str(plan.concurrency) == (f"{expected[0]}x{slots}")
    assert f"x {slots} slots x {expected[2]} threads" in plan.describe()
    given = sizing.choose(sizing.Node(cores, int(free_gib * GiB)), per_process, processes=1, threads=1, slots=slots)
    assert (given.processes, given.slots, given.threads) == (1, slots, 1)


@pytest.mark.parametrize("cores, free_gib, expected", [
    (16, 62, (4, 1, 4)),    # memory holds the processes the cores want: processes, as measured
    (16, 9, (2, 2, 4)),     # it holds two of the four: two slots in each, four renders at once
    (16, 5.5, (1, 2, 8)),   # one process, as many slots as the rest of the memory holds
    (16, 8, (2, 1, 8)),     # no room for a slot beside two processes: threads share the cores out
    (2, 22, (1, 1, 2)),     # small nodes keep one process with every core
])
def test_auto_puts_slots_where_memory_holds_fewer_processes_than_the_cores_want(cores, free_gib, expected):
    one_slot = int(3.4 * GiB)
    plan = sizing.choose(sizing.Node(cores, int(free_gib * GiB)), one_slot, slots=None)
    assert (plan.processes, plan.slots, plan.threads) == expected
    assert plan.per_process == one_slot + (plan.slots - 1) * sizing.SLOT_BYTES
    assert plan.processes * plan.per_process + sizing.RESERVE_BYTES <= free_gib * GiB or plan.slots == 1
    assert ("render slots in each" in plan.reason) == (plan.slots > 1)
