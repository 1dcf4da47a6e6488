"""How many worker processes, render slots in each, and OpenVINO threads each slot, a node should run.

The UNet is compute-bound, and several processes on a big node beat one process with every core:
on 16-core Intel Xeons with the full-size 512 px UNet (bf16), UNet steps/s in total were 1.71 and
1.85 for 1 process x 16 threads, 1.82 for 2 x 8, 2.08 and 2.36 for 4 x 4, 2.41 for 8 x 2. Four
threads per process takes nearly all of that gain with half the processes of 8 x 2, so half the
memory and each job finishing twice as soon. On 2 cores 1 x 2 and 2 x 1 are level (1.03x to 1.06x
for 2 x 1), so small nodes keep one process with every core. Memory bounds the count: a process
holding the 512 px model peaks near 3.4 GiB, and no more processes start than the memory holds.
Render slots (``--concurrency PxS``) share one compiled copy of the weights per process, each slot
adding only its working memory: measured at full size on 2 cores, 1x2 rendered 1.03x the jobs/min
of 2x1 at 0.60x the memory. ``auto`` puts slots where the memory holds fewer processes than the cores
want; where the processes fit it keeps them, as measured on 16-core Xeons.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from zoomq.errors import InvalidParameter

GiB = 2**30
THREADS_PER_PROCESS = 4   # on nodes of at least MIN_CORES_TO_SPLIT cores
MIN_CORES_TO_SPLIT = 8
BASE_BYTES = int(0.4 * GiB)  # Python, torch, diffusers, OpenVINO: once a process
SLOT_BYTES = int(0.6 * GiB)  # one render's activations and infer requests: once a slot (measured 0.57 GiB)
RESERVE_BYTES = 1 * GiB   # left to Redis, the web server and the system
ENCODE_BYTES = GiB // 2   # a process that only encodes segments


@dataclass(frozen=True)
class Node:
    cores: int
    memory: int  # bytes available to new processes
    limits: tuple[str, ...] = ()  # the container limits that set the figures, said with the choice


@dataclass(frozen=True)
class Concurrency:
    """``--concurrency PxS``: P processes with S render slots each (a plain number: P processes, 1 slot)."""

    processes: int
    slots: int = 1

    def __str__(self) -> str:
        return str(self.processes) if self.slots == 1 else f"{self.processes}x{self.slots}"


@dataclass(frozen=True)
class Plan:
    processes: int
    threads: int  # OpenVINO threads of each slot
    per_process: int  # estimated peak bytes of one process, its slots included
    reason: str
    slots: int = 1

    @property
    def concurrency(self) -> Concurrency:
        return Concurrency(self.processes, self.slots)

    def describe(self) -> str:
        slots = f" x {self.slots} slots" if self.slots > 1 else ""
        return (f"{self.processes} process{'es' if self.processes > 1 else ''}{slots} x {self.threads} threads "
                f"({self.reason})")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_cpus(root: Path) -> float | None:
    """The CPU quota of this container, in cores (cgroup v2, then v1); None when unlimited."""
    v2 = _read(root / "sys/fs/cgroup/cpu.max")
    if v2:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100000)
    quota_us = _read(root / "sys/fs/cgroup/cpu/cpu.cfs_quota_us")
    period_us = _read(root / "sys/fs/cgroup/cpu/cpu.cfs_period_us")
    if quota_us and period_us and int(quota_us) > 0:
        return int(quota_us) / int(period_us)
    return None


def _cgroup_memory_free(root: Path) -> int | None:
    """Bytes this container may still use (cgroup v2, then v1); None when unlimited."""
    for limit_file, usage_file in (("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory.current"),
                                   ("sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read(root / limit_file), _read(root / usage_file)
        if limit and limit != "max" and int(limit) < 2**60:  # v1 says "unlimited" with a huge number
            return max(0, int(limit) - int(usage or 0))
    return None


def _mem_available(root: Path) -> int:
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def this_node(root: Path = Path("/"), cores: int | None = None) -> Node:
    """Cores this process may run on and memory free for new processes, container limits
    included (read below ``root``: ``/proc`` and ``/sys/fs/cgroup``)."""
    cores = cores or len(os.sched_getaffinity(0))
    limits = []
    quota = _cgroup_cpus(root)
    if quota is not None and quota < cores:
        cores = max(1, math.floor(quota))
        limits.append("cgroup cpu quota")
    memory = _mem_available(root)
    free = _cgroup_memory_free(root)
    if free is not None and free < memory:
        memory = free
        limits.append("cgroup memory limit")
    return Node(cores, memory, tuple(limits))


def weights_factor(precision: str, cpu_flags: set[str], vendor: str) -> float:
    """Compiled weights per byte of the fp16 IR: f32 doubles them. ``auto`` is estimated from the
    CPU without timing it, by what it measured on the CPUs seen so far: bf16 with AMX, and on AMD
    CPUs with AVX-512 BF16; f32 elsewhere (an Intel AVX-512 BF16 without AMX ran f32 faster)."""
    if precision == "auto":
        bf16 = "amx_bf16" in cpu_flags or ("avx512_bf16" in cpu_flags and vendor == "AuthenticAMD")
        precision = "bf16" if bf16 else "f32"
    return 2.0 if precision == "f32" else 1.0


def model_bytes(folder: Path) -> int:
    """Bytes of the model's OpenVINO weights on disk (fp16 or int8)."""
    return sum(p.stat().st_size for p in Path(folder).glob("*/*.bin")) + sum(
        p.stat().st_size for p in Path(folder).glob("*.bin"))


def process_bytes(models: list[Path], factor: float, slots: int = 1) -> int:
    """Estimated peak memory of one worker process holding ``models`` once, with ``slots`` render
    slots. Calibrated on the full-size 512 px text-to-image model at bf16 (2.4 GiB of IR), PSS
    measured with ``benchmarks/slots.py`` on 2 cores: 3.34 GiB for one slot, 3.87 GiB for two
    (0.57 GiB a slot), 6.47 GiB for two one-slot processes."""
    if not models:
        return ENCODE_BYTES
    return BASE_BYTES + slots * SLOT_BYTES + int(factor * sum(model_bytes(m) for m in models))


def _slots_where_memory_binds(node: Node, per_process: int, slot_bytes: int) -> tuple[int, int, int] | None:
    """(processes, slots, processes wanted) when the memory holds fewer one-slot processes than the
    cores would take, but room for slots in those that fit: the renders the cores want at once, on
    fewer copies of the weights. None where processes fit (or not one does)."""
    if node.cores < MIN_CORES_TO_SPLIT or slot_bytes <= 0:
        return None
    wanted = node.cores // THREADS_PER_PROCESS
    room = max(0, node.memory - RESERVE_BYTES)
    fits = room // per_process
    if not 1 <= fits < wanted:
        return None
    slots = min(-(-wanted // fits), 1 + (room // fits - per_process) // slot_bytes)
    return (fits, slots, wanted) if slots > 1 else None


def choose(node: Node, per_process: int, processes: int | None = None, threads: int | None = None,
           slots: int | None = 1, slot_bytes: int = SLOT_BYTES) -> Plan:
    """Processes x slots x threads for a node; ``per_process``: the bytes of one process with its
    ``slots`` (one where ``slots`` is None: auto). Unless given: 4 threads a slot on nodes of 8 cores
    or more (one process with every core below that), as many processes as the memory holds, at
    least one; with ``slots`` auto, where the memory holds fewer processes than the cores want,
    render slots in those (``slot_bytes`` each) make up the rest; threads share the cores out
    between every slot of every process."""
    notes = []
    if slots is None:
        slots = 1
        filled = _slots_where_memory_binds(node, per_process, slot_bytes) if processes is None and threads is None \
            else None
        if filled is not None:
            processes, slots, wanted = filled
            per_process += (slots - 1) * slot_bytes
            threads = max(1, node.cores // (processes * slots))
            reason = f"{node.cores} cores, {node.memory / GiB:.1f} GiB free, ~{per_process / GiB:.1f} GiB a process"
            if node.limits:
                reason += f" (by the {' and '.join(node.limits)})"
            note = (f"memory holds {processes} of the {wanted} processes the cores would take: "
                    f"{slots} render slots in each, on one copy of the weights")
            return Plan(processes, threads, per_process, f"{reason}; {note}", slots)
    if processes is None:
        if threads is not None:
            wanted = max(1, node.cores // (threads * slots))
        elif slots > 1:
            wanted = max(1, node.cores // (THREADS_PER_PROCESS * slots)) if node.cores >= MIN_CORES_TO_SPLIT else 1
        else:
            wanted = node.cores // THREADS_PER_PROCESS if node.cores >= MIN_CORES_TO_SPLIT else 1
        fits = max(0, node.memory - RESERVE_BYTES) // per_process
        processes = max(1, min(wanted, fits))
        if fits < 1:
            notes.append("WARNING: even one process may not fit in memory")
        elif fits < wanted:
            notes.append(f"memory holds {fits} of the {wanted} processes the cores would take")
    else:
        notes.append("processes as given")
    if threads is None:
        threads = max(1, node.cores // (processes * slots))
    else:
        notes.append("threads as given")
    reason = f"{node.cores} cores, {node.memory / GiB:.1f} GiB free, ~{per_process / GiB:.1f} GiB a process"
    if node.limits:
        reason += f" (by the {' and '.join(node.limits)})"
    return Plan(processes, threads, per_process, "; ".join([reason, *notes]), slots)


def for_worker(models: list[Path], precision: str, processes: int | None = None,
               threads: int | None = None, node: Node | None = None, slots: int | None = 1) -> Plan:
    """The plan for a worker serving ``models`` on this node (or ``node``), ``slots`` a process
    (None: auto, see ``choose``)."""
    from zoomq.render.precision import cpu_flags  # reads /proc/cpuinfo; imports no OpenVINO

    per_process = process_bytes(models, weights_factor(precision, *cpu_flags()), slots or 1)
    return choose(node or this_node(), per_process, processes, threads, slots,
                  SLOT_BYTES if models else 0)


_SHAPE = re.compile(r"([0-9]+)(?:x([0-9]+))?")


def parse_concurrency(value: str) -> Concurrency | None:
    """``auto`` (None: choose from the node), a whole number of processes ≥ 1, or ``PxS``: P
    processes with S render slots each."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    shape = _SHAPE.fullmatch(text)
    if shape is None or int(shape[1]) < 1 or int(shape[2] or 1) < 1:
        raise InvalidParameter("concurrency", value, "must be auto, a whole number ≥ 1 of processes, or PxS "
                               "(P processes with S render slots each, e.g. 1x2)")
    return Concurrency(int(shape[1]), int(shape[2] or 1))
