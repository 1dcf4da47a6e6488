"""The OpenVINO side of a prepared model: read the IR once, compile it per static shape, keep it.

Static shapes run about twice as fast as dynamic ones on CPU, so each sub-model is reshaped to the
exact batch and size of the render before compiling; a compiled model is kept per shape. The
on-disk compile cache is used where it pays (``ZOOMQ_COMPILE_CACHE``): on CPU it does not. The
mapped weight files are kept out of resident memory while and after compiling (``file_pages``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import openvino as ov

from zoomq.config import Settings
from zoomq.render import file_pages

_core_lock = threading.Lock()
_core: ov.Core | None = None


def core() -> ov.Core:
    """One ``ov.Core`` per process, made on first use (never before a worker forks)."""
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def compile_config(s: Settings, cache: bool = True, streams: int = 1) -> dict:
    """OpenVINO compile properties for the settings (latency, precision, threads, cache). With
    ``streams`` > 1 (a worker's render slots) the model runs that many infer requests at once,
    each stream with ``ZOOMQ_THREADS`` threads of its own, on one copy of the weights."""
    config: dict[str, str | int | bool] = {"PERFORMANCE_HINT": "LATENCY"}
    if streams > 1:
        config.update(PERFORMANCE_HINT="THROUGHPUT", NUM_STREAMS=streams)
    if cache:
        config["CACHE_DIR"] = str(s.ov_cache_dir)
    if s.inference_precision != "auto":
        config["INFERENCE_PRECISION_HINT"] = s.inference_precision
    if s.threads:
        config["INFERENCE_NUM_THREADS"] = s.threads * streams
        # With a thread count set, several worker processes share the node. OpenVINO would pin
        # each process's threads to the first cores, all on the same ones: measured here, two
        # 1-thread workers ran each job 2x slower, no faster in total than one. Let the OS spread them.
        config["ENABLE_CPU_PINNING"] = False
    return config


class CompiledParts:
    """Compiled sub-models of one prepared model folder, one per (part, shape). Thread-safe: each
    ``run`` makes its own infer request, so a worker's render slots share every compiled model
    (``streams``: how many run at once, see ``compile_config``)."""

    def __init__(self, folder: Path, settings: Settings, streams: int = 1):
        self.folder = Path(folder)
        self.settings = settings
        self.streams = streams
        self._models: dict[str, ov.Model] = {}
        self._compiled: dict[tuple, ov.CompiledModel] = {}
        self._lock = threading.Lock()

    def compiled(self, part: str, shapes: dict[str, list[int]]) -> ov.CompiledModel:
        key = (part, tuple((k, tuple(v)) for k, v in sorted(shapes.items())))
        with self._lock:
            if key not in self._compiled:
                model = self._models.get(part)
                if model is None:
                    model = self._models[part] = core().read_model(self.folder / f"{part}.xml")
                static = model.clone()
                static.reshape({name: ov.PartialShape(shape) for name, shape in shapes.items()})
                cache = self.settings.compile_cache
                mapped = [self.folder / f"{part}.bin"]
                if cache:
                    self.settings.ov_cache_dir.mkdir(parents=True, exist_ok=True)
                    mapped.append(self.settings.ov_cache_dir)
                with file_pages.kept_out(mapped):
                    self._compiled[key] = core().compile_model(static, self.settings.device,
                                                               compile_config(self.settings, cache, self.streams))
            return self._compiled[key]

    @property
    def compiled_shapes(self) -> set[tuple]:
        """(part, ((input, shape), ...)) of every compiled model held."""
        with self._lock:
            return set(self._compiled)

    def run(self, part: str, **inputs: np.ndarray) -> np.ndarray:
        """Run ``part`` on ``inputs`` (compiling it for their shapes if needed); returns output 0."""
        return self.run_outputs(part, (), **inputs)[0]

    def run_outputs(self, part: str, names: tuple[str, ...], **inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run ``part`` like ``run``; returns output 0 and then the outputs named ``names``."""
        compiled = self.compiled(part, {k: list(np.shape(v)) for k, v in inputs.items()})
        # ascontiguousarray would turn the 0-d timestep into shape (1,)
        result = compiled.create_infer_request().infer({k: np.asarray(v, order="C") for k, v in inputs.items()})
        return (np.array(result[compiled.output(0)]), *(np.array(result[compiled.output(n)]) for n in names))
