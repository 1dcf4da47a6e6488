"""Import the render core (torch, diffusers, transformers) in a worker, and not one module more.

diffusers' torch utilities import ``torch._dynamo`` for one name, ``allow_in_graph``, which marks
its attention blocks for ``torch.compile``. That import is a third of the render core's: measured
on 2 cores, 3.3 s for the render core with it, 2.3 s without. A worker never runs torch's compiler
(OpenVINO runs the networks), so while diffusers is imported a stand-in module answers that name
with a no-op, as diffusers itself does where dynamo is missing, and is taken out again at once: a
later ``import torch._dynamo`` in the same process gets the real module.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from types import ModuleType

_DYNAMO = "torch._dynamo"
# The warm-up's thread and a render slot's may both ask at once. Without this lock the second saw
# diffusers half imported and failed ("cannot import name VaeImageProcessor from partially
# initialized module"): the first must finish before the second looks.
_lock = threading.Lock()


def _identity(cls):
    return cls


def import_render_core() -> ModuleType:
    """``zoomq.render.pipeline``, imported without ``torch._dynamo`` unless something else has
    imported it already. For worker processes: the stand-in is visible to other threads' imports
    for as long as diffusers' torch utilities take to import (0.4 s), and nothing else in a worker
    imports torch's compiler."""
    with _lock:
        return _import()


def _import() -> ModuleType:
    if "zoomq.render.pipeline" in sys.modules or _DYNAMO in sys.modules or "diffusers.utils.torch_utils" in sys.modules:
        return importlib.import_module("zoomq.render.pipeline")
    import torch  # noqa: F401 — before the stand-in, so torch's own start-up sees no stand-in

    stand_in = types.ModuleType(_DYNAMO, "stand-in while diffusers imports: see zoomq.render.core_import")
    stand_in.allow_in_graph = _identity  # type: ignore[attr-defined]
    sys.modules[_DYNAMO] = stand_in
    try:
        importlib.import_module("diffusers.utils.torch_utils")
    finally:
        if sys.modules.get(_DYNAMO) is stand_in:
            del sys.modules[_DYNAMO]
    return importlib.import_module("zoomq.render.pipeline")
