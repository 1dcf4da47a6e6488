"""The diffusers schedulers zoomq offers, by the short names users type.

A new scheduler object is made for every render (schedulers keep per-run state) from the model's
own scheduler config, exactly as diffusers' ``from_config`` swap does.
"""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from zoomq.errors import InvalidParameter

# name -> (class, extra config); "default" is the class the model was saved with.
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "lms": (LMSDiscreteScheduler, {}),
    "pndm": (PNDMScheduler, {}),
}
NAMES = ("default", *SCHEDULERS)


def check_name(name: str) -> str:
    if name not in NAMES:
        raise InvalidParameter("scheduler", name, f"unknown scheduler; choose one of {', '.join(NAMES)}")
    return name


def make(name: str, config: dict) -> SchedulerMixin:
    """A fresh scheduler called ``name`` configured from the model's ``scheduler_config.json``."""
    check_name(name)
    if name == "default":
        import diffusers

        cls = getattr(diffusers, config["_class_name"])
        return cls.from_config(config)
    cls, extra = SCHEDULERS[name]
    return cls.from_config(config, **extra)
