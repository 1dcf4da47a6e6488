"""What kind of SD2 model a folder holds, and what follows from the kind: the variant (standard or
few-step SD-Turbo), its render defaults, and its latent factor. Shared by ``model_prep`` (which
detects it) and the manifest (which records it), so neither imports the other."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

#: What a render of a model uses for the parameters a request leaves out, by variant. Recorded in
#: the manifest's kind when a model is prepared, so the render core, the producer and the web all
#: read them from the model (``Manifest.defaults``, the workers' registry).
DEFAULTS = {
    "standard": {"steps": 20, "guidance": 7.5, "scheduler": "default"},
    # SD-Turbo (adversarial diffusion distillation): one step, no guidance, its own Euler scheduler.
    "turbo": {"steps": 1, "guidance": 0.0, "scheduler": "default"},
}
_FEW_STEP_SCHEDULERS = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")


def variant_of(scheduler: dict) -> str:
    """``turbo`` for a few-step distilled model, else ``standard``, from its scheduler config.

    SD-Turbo ships the SD 2.1 UNet, text encoder and autoencoder unchanged: only its scheduler
    tells it apart, an Euler scheduler with ``trailing`` timestep spacing (which starts sampling
    from the very last training timestep, as distillation trained it to) and epsilon prediction.
    SD 2 models ship DDIM or PNDM with leading spacing; zero-terminal-SNR fine-tunes use trailing
    spacing too, but with DDIM, ``rescale_betas_zero_snr`` and v-prediction, and are not few-step.
    """
    few_step = (
        scheduler.get("_class_name") in _FEW_STEP_SCHEDULERS
        and scheduler.get("timestep_spacing") == "trailing"
        and scheduler.get("prediction_type", "epsilon") == "epsilon"
        and not scheduler.get("rescale_betas_zero_snr", False)
        and not scheduler.get("use_karras_sigmas", False)
    )
    return "turbo" if few_step else "standard"


@dataclass(frozen=True)
class ModelKind:
    task: str  # "text-to-image" or "inpainting"
    family: str  # "sd2", "sd2-miniature" or "sd1"
    prediction_type: str
    native_size: int
    latent_channels: int
    unet_in_channels: int
    vae_scale_factor: int
    vae_scaling_factor: float
    text_hidden_size: int
    variant: str = "standard"  # "turbo": a few-step distilled model (see variant_of)
    defaults: dict = field(default_factory=lambda: dict(DEFAULTS["standard"]))  # steps, guidance, scheduler

    def to_dict(self) -> dict:
        return asdict(self)


def latent_factor_of(vae_config: dict) -> int:
    """A VAE's downsampling from its config, as diffusers computes ``vae_scale_factor``: one
    halving per block after the first."""
    return 2 ** (len(vae_config.get("block_out_channels", [0] * 4)) - 1)
