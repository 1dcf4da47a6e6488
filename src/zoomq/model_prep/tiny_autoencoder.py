"""The tiny autoencoder (TAESD, diffusers' ``AutoencoderTiny``) a prepared model may carry as an
extra decoder: ``zoomq prepare ... --tiny-autoencoder ID|DIR|random``.

About 1.2 M parameters per half against the SD autoencoder's 34 M/50 M: it decodes a latent at a
small fraction of the cost, losing some fine detail. Its latents are the UNet's as they are (its
scaling factor is 1.0: no division by the model's 0.18215), and it outputs images in [-1, 1] like
the SD decoder, so the same post-processing follows. Only its decoder is converted.

``zoomq prepare`` asks here which one a model gets (``wanted``), converts it with the model
(``converter``) or adds it to a model already prepared (``add_to_model``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from zoomq.errors import ModelError
from zoomq.model import manifest as mf
from zoomq.model_prep import hub

#: What ``--tiny-autoencoder`` takes to build a seeded random-weight TAESD (tests, benchmarks).
RANDOM = "random"
#: The published TAESD for SD 1 and 2 latents, for hints.
HUB_ID = "madebyollin/taesd"
_HUB_FILES = ["config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"]
#: Where ``prepare_random`` keeps a random TAESD's diffusers folder, beside the pipeline's.
KEPT = "diffusers/tiny_autoencoder"


def label(spec: str, seed: int) -> str:
    """The source the manifest records for ``spec``: ``random:seed=N``, a folder's absolute path
    or the hub id; the same label means the same tiny autoencoder."""
    if spec == RANDOM:
        return f"{RANDOM}:seed={seed}"
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def seed_of(recorded: str) -> int | None:
    """The seed of a recorded ``random:seed=N`` source; None for another source."""
    m = re.fullmatch(rf"{RANDOM}:seed=(\d+)", recorded)
    return int(m.group(1)) if m else None


def latent_factor(config: dict) -> int:
    """Image pixels per latent pixel of an ``AutoencoderTiny`` config: one upsampling per decoder stage
    after the first (8 for TAESD's four)."""
    stages = len(config.get("num_decoder_blocks", (3, 3, 3, 1)))
    return int(config.get("upsampling_scaling_factor", 2)) ** (stages - 1)


def resolve(spec: str) -> Path:
    """A local ``AutoencoderTiny`` folder (saved by ``save_pretrained``) as it is, or a hub id
    downloaded (or found in the hub cache)."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"--tiny-autoencoder {spec}: is a file; pass a folder saved by "
                             "AutoencoderTiny.save_pretrained, a Hugging Face hub id or `random`")
        return path.resolve()
    if not hub.is_hub_id(spec):
        raise ModelError(f"--tiny-autoencoder {spec}: no such folder, and not a Hugging Face hub id (owner/name) "
                         f"or `{RANDOM}`")
    return hub.download(spec, "--tiny-autoencoder", _HUB_FILES)


def check(folder: Path, spec: str, latent_channels: int, model_factor: int) -> None:
    """Raise ``ModelError`` unless ``folder`` holds an ``AutoencoderTiny`` whose latents are the model's."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise ModelError(f"--tiny-autoencoder {spec}: {folder} has no config.json; pass a folder saved by "
                         "AutoencoderTiny.save_pretrained") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"--tiny-autoencoder {spec}: cannot read {folder / 'config.json'}: {e}") from None
    cls = config.get("_class_name")
    if cls != "AutoencoderTiny":
        raise ModelError(f"--tiny-autoencoder {spec}: holds a {cls}, not an AutoencoderTiny (TAESD, e.g. {HUB_ID})")
    channels = int(config.get("latent_channels", 4))
    factor = latent_factor(config)
    if (channels, factor) != (latent_channels, model_factor):
        raise ModelError(
            f"--tiny-autoencoder {spec}: its latents have {channels} channels at 1/{factor} of the image side, "
            f"the model's {latent_channels} at 1/{model_factor}; it cannot decode this model's latents"
        )


def build_random(folder: Path, *, seed: int = 0, latent_channels: int = 4, latent_factor: int = 8) -> Path:
    """Build a seeded random-weight ``AutoencoderTiny`` and save it in ``folder``.

    At a latent factor of 8 it has TAESD's architecture exactly (diffusers' default config); another
    power of two gets one stage per halving. Random weights make a near-constant picture, so the last
    convolution is rescaled to spread a random latent's decoding over [-1, 1] (mean 0, deviation 0.5),
    and pictures show whether decoding went right.
    """
    import torch
    from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny

    if latent_factor < 1 or latent_factor & (latent_factor - 1):
        raise ValueError(f"latent_factor must be a power of two, got {latent_factor}")
    stages = latent_factor.bit_length()
    torch.manual_seed(seed)
    if stages == 4:
        model = AutoencoderTiny(latent_channels=latent_channels)
    else:
        model = AutoencoderTiny(
            latent_channels=latent_channels,
            encoder_block_out_channels=(64,) * stages,
            decoder_block_out_channels=(64,) * stages,
            num_encoder_blocks=(1,) + (3,) * (stages - 1),
            num_decoder_blocks=(3,) * (stages - 1) + (1,),
        )
    model.eval()
    last = model.decoder.layers[-1]
    generator = torch.Generator("cpu").manual_seed(seed)
    probe = torch.randn(2, latent_channels, 16, 16, generator=generator)
    with torch.no_grad():
        raw = (model.decoder(probe) + 1) / 2  # the last convolution's output (DecoderTiny maps it by 2x - 1)
        mean, std = raw.mean(), raw.std()
        scale = 0.25 / std
        last.weight.mul_(scale)
        last.bias.copy_((last.bias - mean) * scale + 0.5)
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


# -- in a prepared model ----------------------------------------------------------------------

def kept_folder(out: Path, dest: Path) -> Path | None:
    """Where a random tiny autoencoder converted into ``dest`` keeps its diffusers folder: beside the
    pipeline's diffusers folder, the stage's or ``out``'s (``prepare_random``); None when neither has one."""
    base = dest if (dest / "diffusers").is_dir() else out
    return base / KEPT if (base / "diffusers").is_dir() else None


def wanted(out: Path, source: str, spec: str | None, seed: int) -> tuple[str, int, bool] | None:
    """(spec, seed, asked) of the tiny autoencoder to give the model: the one asked for (``asked``),
    else the one the model already in ``out`` has (a model prepared again keeps it); None for none."""
    if spec is not None:
        return spec, seed, True
    try:
        current = mf.read(out)
    except ModelError:
        return None
    recorded = (current.data.get("tiny_autoencoder") or {}).get("source")
    if current.data.get("source") != source or not recorded:
        return None
    kept_seed = seed_of(recorded)
    return (RANDOM, kept_seed, False) if kept_seed is not None else (recorded, seed, False)


class Converter:
    """Converts the tiny autoencoder ``spec`` (hub id, folder or ``random``) into a folder, returning
    its manifest record; ``label`` names it there. ``keep(dest)`` says where a random one's diffusers
    folder stays (None: nowhere)."""

    def __init__(self, spec: str, seed: int, latent_channels: int, latent_factor: int, *, route: str,
                 report: Callable[[str], None], keep: Callable[[Path], Path | None] | None = None):
        self.spec, self.seed, self.route, self.report, self.keep = spec, seed, route, report, keep
        self.latent_channels, self.latent_factor = latent_channels, latent_factor
        self.label = label(spec, seed)
        self._found: Path | None = None

    def fetch(self) -> Path:
        """The ``AutoencoderTiny`` folder of a hub id or folder, found and checked on the first call."""
        if self._found is None:
            found = resolve(self.spec)
            check(found, self.spec, self.latent_channels, self.latent_factor)
            self._found = found
        return self._found

    def __call__(self, dest: Path) -> dict:
        from zoomq.model_prep.convert import tiny_decoder_part
        from zoomq.model_prep.export import convert_part

        with tempfile.TemporaryDirectory(prefix="zoomq-taesd-", dir=dest) as work:
            source_dir = self._diffusers_folder(dest, Path(work))
            self.report(f"converting {mf.TINY_DECODER} from {self.label} ({self.route}, fp16 weights)")
            # fp16 whatever --weights says: int8 would save about 1 MB of 2.4 and change the picture
            convert_part(source_dir, tiny_decoder_part(self.latent_channels), dest, route=self.route, weights="fp16")
        return {"source": self.label, "part": mf.TINY_DECODER, "scaling_factor": 1.0}

    def _diffusers_folder(self, dest: Path, work: Path) -> Path:
        if self.spec != RANDOM:
            return self.fetch()
        self.report(f"building a random-weight tiny autoencoder (TAESD architecture, seed {self.seed})")
        kept = self.keep(dest) if self.keep is not None else None
        return build_random(kept or work / "taesd", seed=self.seed, latent_channels=self.latent_channels,
                            latent_factor=self.latent_factor)


def converter(spec: str, seed: int, asked: bool, latent_channels: int, latent_factor: int, *, route: str,
              report: Callable[[str], None], keep: Callable[[Path], Path | None] | None = None) -> Converter:
    """The ``Converter`` of ``spec`` for a model's latents. One ``asked`` for is fetched and checked
    now, so a wrong one fails before the model's conversion (one kept from the model already there
    only when it is converted: a model with nothing to do needs no network)."""
    made = Converter(spec, seed, latent_channels, latent_factor, route=route, report=report, keep=keep)
    if asked and spec != RANDOM:
        made.fetch()
    return made


def add_to_model(out: Path, current: mf.Manifest, convert: Callable[[Path], dict]) -> None:
    """Give the model in ``out`` a tiny autoencoder, or another one, in place: the rest of the model
    stays as it is. The manifest never lists part files that are not the ones it hashed."""
    names = [f"{mf.TINY_DECODER}.{ext}" for ext in ("xml", "bin")]
    data = dict(current.data)
    files = {k: v for k, v in data["files"].items() if k not in names}
    if data.pop("tiny_autoencoder", None):  # replacing one: first the manifest stops listing it
        mf.write(out, {**data, "files": files})
    with tempfile.TemporaryDirectory(prefix=".zoomq-tiny-", dir=out) as work:
        record = convert(Path(work))
        for name in names:
            os.replace(Path(work) / name, out / name)
    files.update({name: mf.sha256_file(out / name) for name in names})
    mf.write(out, {**data, "tiny_autoencoder": record, "files": files})
