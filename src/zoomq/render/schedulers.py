"""The diffusers schedulers zoomq offers, by the short names users type.

A new scheduler object is made for every render (schedulers keep per-run state) from the model's
own scheduler config, exactly as diffusers' ``from_config`` swap does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zoomq.errors import InvalidParameter

if TYPE_CHECKING:
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

# name -> (diffusers class, extra config); "default" is the class the model was saved with.
# Classes are looked up by name when a render starts, so checking a name (the producer, the web
# front end) does not import diffusers and torch.
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "lms": ("LMSDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
}
NAMES = ("default", *SCHEDULERS)


def check_name(name: str) -> str:
    if name not in NAMES:
        raise InvalidParameter("scheduler", name, f"unknown scheduler; choose one of {', '.join(NAMES)}")
    return name


def make(name: str, config: dict) -> SchedulerMixin:
    """A fresh scheduler called ``name`` configured from the model's ``scheduler_config.json``."""
    import diffusers

    check_name(name)
    if name == "default":
        return getattr(diffusers, config["_class_name"]).from_config(config)
    class_name, extra = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **extra)
