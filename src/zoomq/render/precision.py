"""Which inference precision ``auto`` means on this machine: the faster of f32 and bf16, measured.

CPUs differ: with AMX, or on the AMD EPYCs measured here, bf16 runs the UNet 1.8x to 4.3x faster
than f32; on an Intel Xeon whose AVX-512 BF16 comes without AMX, bf16 convolutions ran 1.4x
slower than f32 and the whole UNet 1.6x slower. OpenVINO's own default picks bf16 whenever the
CPU has it. So zoomq times a small convolution and matrix multiplication in both precisions once
(about two seconds), remembers the answer in the cache directory per CPU, OpenVINO version and
thread count, and compiles every model with the winner.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from zoomq.config import Settings

CANDIDATES = ("f32", "bf16")
MARGIN = 0.05  # bf16 rounds the picture a little: take it only when it is clearly faster
_resolved: dict[str, str] = {}
_resolving = threading.Lock()


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        block = path.read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}


def cpu_flags() -> tuple[set[str], str]:
    """The CPU's feature flags and vendor (``GenuineIntel``, ``AuthenticAMD``), from /proc/cpuinfo."""
    info = _cpuinfo()
    return set(info.get("flags", "").split()), info.get("vendor_id", "")


def cpu_name() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


#: The matrix instructions that set a CPU's speed at each precision, best first.
_MATRIX_ISA = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def cpu_label(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """Name, generation and matrix instructions, e.g. ``AMD EPYC (family 26 model 2, AVX-512 BF16)``.

    A virtual machine's model name alone may not tell CPUs apart: here "AMD EPYC" has named two
    CPUs whose bf16 matmul peaks differ twofold (393 and 855 GFLOP/s).
    """
    info = _cpuinfo(cpuinfo)
    flags = set(info.get("flags", "").split())
    isa = next((label for flag, label in _MATRIX_ISA if flag in flags), None)
    detail = [f"family {info['cpu family']} model {info['model']}"] if "cpu family" in info and "model" in info else []
    detail += [isa] if isa else []
    name = info.get("model name") or cpu_name()
    return f"{name} ({', '.join(detail)})" if detail else name


def _key(s: Settings) -> str:
    import openvino as ov

    return f"{s.device}|{cpu_label()}|{os.cpu_count()} cpus|{s.threads} threads|openvino {ov.get_version()}"


def _probe_model():
    """Two 3x3 convolutions at the UNet's first width, then a matrix multiplication."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 320, 64, 64], np.float32, name="x")
    w = ops.constant(rng.standard_normal((320, 320, 3, 3), dtype=np.float32) * 0.02)
    y = ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])
    y = ops.convolution(y, w, [1, 1], [1, 1], [1, 1], [1, 1])
    y = ops.reshape(y, ops.constant(np.array([320, 4096], dtype=np.int64)), False)
    m = ops.constant(rng.standard_normal((4096, 1024), dtype=np.float32) * 0.02)
    return ov.Model([ops.matmul(y, m, False, False)], [x]), rng.standard_normal((1, 320, 64, 64), dtype=np.float32)


def measure(s: Settings, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` seconds of the probe model under each candidate precision."""
    from zoomq.render.ov_models import compile_config, core

    model, x = _probe_model()
    times = {}
    for precision in CANDIDATES:
        compiled = core().compile_model(model, s.device, compile_config(replace(s, inference_precision=precision),
                                                                        cache=False))
        request = compiled.create_infer_request()
        request.infer([x])
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            request.infer([x])
            best = min(best, time.perf_counter() - start)
        times[precision] = best
    return times


def _supports_bf16(s: Settings) -> bool:
    from zoomq.render.ov_models import core

    try:
        return "BF16" in core().get_property(s.device, "OPTIMIZATION_CAPABILITIES")
    except Exception:  # a device without the property: do not guess
        return False


def resolve(s: Settings) -> str:
    """The precision to compile with: the setting itself, or for ``auto`` the measured winner."""
    if s.inference_precision != "auto":
        return s.inference_precision
    with _resolving:  # a worker's render slots ask at once: one measures, the others wait for it
        return _resolve(s)


def _resolve(s: Settings) -> str:
    key = _key(s)
    if key in _resolved:
        return _resolved[key]
    path = s.cache_dir / "precision.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        if _supports_bf16(s):
            times = measure(s)
            choice = "bf16" if times["bf16"] < times["f32"] * (1 - MARGIN) else "f32"
        else:
            times, choice = {}, "f32"
        known[key] = {"choice": choice, "seconds": times, "measured": time.time()}
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(known, f, indent=1)
        os.replace(f.name, path)  # atomic: concurrent workers never read half a file
    _resolved[key] = known[key]["choice"]
    return _resolved[key]


def applied(s: Settings) -> Settings:
    """``s`` with ``auto`` replaced by the precision it means here, so compiles and recipes name it."""
    return replace(s, inference_precision=resolve(s))
