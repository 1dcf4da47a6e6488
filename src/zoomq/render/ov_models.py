"""The OpenVINO side of a prepared model: read the IR once, compile it per static shape, keep it.

Static shapes run about twice as fast as dynamic ones on CPU, so each sub-model is reshaped to the
exact batch and size of the render before compiling; a compiled model is kept per shape. OpenVINO's
on-disk compile cache keeps, by default, the shapes a worker's warm-up compiles, so the next worker on
the node starts sooner (``ZOOMQ_COMPILE_CACHE``). The mapped weight files and cache blobs are kept out
of resident memory while and after compiling (``file_pages``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import openvino as ov

from zoomq.config import Settings
from zoomq.render import file_pages

log = logging.getLogger(__name__)

_core_lock = threading.Lock()
_core: ov.Core | None = None
_unwritable: set[Path] = set()  # cache folders already warned about


def core() -> ov.Core:
    """One ``ov.Core`` per process, made on first use (never before a worker forks)."""
    global _core
    with _core_lock:
        if _core is None:
            _prime_numpy_bridge()
            _core = ov.Core()
        return _core


def _prime_numpy_bridge() -> None:
    """Make OpenVINO's Python binding build its numpy type table now, in one thread. Built lazily by
    the first ``Tensor.data`` (every ``infer``), that table is a C++ static whose initialisation
    releases the GIL half-way (pybind11's numpy API lookup): two render slots running their first
    infer at once then deadlock, one waiting for the static while holding the GIL, the other
    holding the static while waiting for the GIL (seen in a 1x2 worker: the whole process froze;
    openvino 2026.4). Nothing infers before this: every compiled model comes from ``core()``."""
    ov.Tensor(np.zeros(1, np.float32)).data  # noqa: B018 — the access is the point


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


def _cache_usable(folder: Path) -> bool:
    """Whether the compile cache can be written in ``folder`` (made if missing); warns once if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK | os.X_OK):
            return True
    except OSError:
        pass
    with _core_lock:
        if folder not in _unwritable:
            _unwritable.add(folder)
            log.warning("the compile cache folder %s is not writable: compiling without it "
                        "(set ZOOMQ_CACHE_DIR to a writable folder, or ZOOMQ_COMPILE_CACHE=off)", folder)
    return False


@contextmanager
def _cache_lock(folder: Path) -> Iterator[None]:
    """Hold the node's lock on the compile cache ``folder`` for one compile. OpenVINO writes a blob in
    place, and the blobs of two compiles of one model can differ in a few bytes, so two processes
    storing the same blob at once could leave one mixed from both, which OpenVINO would load without
    noticing. Under the lock the first process stores it and the next ones load it complete."""
    with open(folder / ".zoomq-compile.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def caches(settings: Settings, warm_up: bool) -> bool:
    """Whether a compile is kept in the on-disk cache: ``on``, every one; ``auto``, a warm-up's."""
    wanted = settings.compile_cache == "on" or (settings.compile_cache == "auto" and warm_up)
    return wanted and _cache_usable(settings.ov_cache_dir)


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
        self._compiling: dict[tuple, threading.Lock] = {}  # one lock a shape: it is compiled once
        self._lock = threading.Lock()  # the dicts; never held while compiling
        self._requests = threading.local()  # the UNet's infer requests, one a thread (``_request``)

    def compiled(self, part: str, shapes: dict[str, list[int]], warm_up: bool = False) -> ov.CompiledModel:
        """``part`` compiled for ``shapes`` (once); ``warm_up``: asked by a worker's warm-up, whose
        shapes the compile cache keeps by default. A part already compiled is answered while
        another compiles: a render's text encoder does not wait for the warm-up's VAE decoder."""
        key = (part, tuple((k, tuple(v)) for k, v in sorted(shapes.items())))
        with self._lock:
            if key in self._compiled:
                return self._compiled[key]
            compiling = self._compiling.setdefault(key, threading.Lock())
        with compiling:
            with self._lock:
                if key in self._compiled:  # compiled by the thread this one waited for
                    return self._compiled[key]
                model = self._models.get(part)
            if model is None:
                model = core().read_model(self.folder / f"{part}.xml")
                with self._lock:
                    model = self._models.setdefault(part, model)
            static = model.clone()
            static.reshape({name: ov.PartialShape(shape) for name, shape in shapes.items()})
            cache = caches(self.settings, warm_up)
            mapped = [self.folder / f"{part}.bin"]
            if cache:
                mapped.append(self.settings.ov_cache_dir)
            with file_pages.kept_out(mapped):
                compiled = self._compile(part, static, cache)
            with self._lock:
                self._compiled[key] = compiled
            return compiled

    def _compile(self, part: str, model: ov.Model, cache: bool) -> ov.CompiledModel:
        """Compile ``model``; a compile cache that fails it (a damaged blob, a full disk) is left out."""
        def compile_it(with_cache: bool) -> ov.CompiledModel:
            return core().compile_model(model, self.settings.device,
                                        compile_config(self.settings, with_cache, self.streams))

        if not cache:
            return compile_it(False)
        try:
            with _cache_lock(self.settings.ov_cache_dir):
                return compile_it(True)
        except (RuntimeError, OSError) as e:  # OSError: the lock file could not be made
            log.warning("compiling %s with the compile cache in %s failed (%s); compiling it without the cache",
                        part, self.settings.ov_cache_dir, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return compile_it(False)

    @property
    def compiled_shapes(self) -> set[tuple]:
        """(part, ((input, shape), ...)) of every compiled model held."""
        with self._lock:
            return set(self._compiled)

    def _request(self, part: str, compiled: ov.CompiledModel) -> ov.InferRequest:
        """An infer request for one call of ``part``. The UNet's (called every step) is kept, one a
        thread: a fresh request allocates its buffers again, and two render slots of one process
        doing so at once wait on each other in the kernel (measured, full-size UNet, 2 slots of
        1 thread: 9.2 s a call against 8.1 s for two processes; with kept requests, 8.1 s). The
        parts called once a render take a fresh one, so their buffers do not outlive the render."""
        if not part.startswith("unet"):
            return compiled.create_infer_request()
        kept = self._requests.__dict__.setdefault("by_model", {})
        request = kept.get(id(compiled))
        if request is None:
            request = kept[id(compiled)] = compiled.create_infer_request()
        return request

    def run(self, part: str, **inputs: np.ndarray) -> np.ndarray:
        """Run ``part`` on ``inputs`` (compiling it for their shapes if needed); returns output 0."""
        return self.run_outputs(part, (), **inputs)[0]

    def run_outputs(self, part: str, names: tuple[str, ...], **inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run ``part`` like ``run``; returns output 0 and then the outputs named ``names``."""
        compiled = self.compiled(part, {k: list(np.shape(v)) for k, v in inputs.items()})
        # ascontiguousarray would turn the 0-d timestep into shape (1,)
        result = self._request(part, compiled).infer({k: np.asarray(v, order="C") for k, v in inputs.items()})
        return (np.array(result[compiled.output(0)]), *(np.array(result[compiled.output(n)]) for n in names))
