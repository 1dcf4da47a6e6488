"""The manifest (``zoomq.json``) of a prepared model folder: what the model is and what it holds.

It is written last when a model is prepared, so a folder without one is not a model; the render
core reads it to know the task, sizes and files, and its sha256 is the model's identity in every
render's recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from zoomq.errors import ModelError
from zoomq.model.kind import DEFAULTS, latent_factor_of, variant_of

MANIFEST = "zoomq.json"
FORMAT = 1
IR_PARTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
#: The tiny autoencoder's decoder (TAESD), an extra part a model may carry (``--tiny-autoencoder``).
TINY_DECODER = "tiny_vae_decoder"
OPTIONAL_IR_PARTS = (TINY_DECODER,)
#: How to give a model the tiny decoder, for the errors that find none.
TINY_HINT = ("add one to the model with `zoomq prepare --model SOURCE --out MODEL_DIR --tiny-autoencoder "
             "madebyollin/taesd` (or a local AutoencoderTiny folder; `--tiny-autoencoder random` for a "
             "random-weight model)")
#: DeepCache's shallow UNet of branch B (``model_prep.deepcache``), one extra part per branch carried.
SHALLOW_UNET_PREFIX = "unet_shallow_"


def shallow_part_name(branch: int) -> str:
    """The IR part of DeepCache's shallow UNet for one branch (``model_prep.deepcache_export``)."""
    return f"{SHALLOW_UNET_PREFIX}{branch}"


def feature_output_name(branch: int) -> str:
    """The UNet's extra output that keeps one DeepCache branch's deep feature."""
    return f"feature_{branch}"
# A random-weight model keeps its diffusers source here, VAE config included (see prepare_random).
_VAE_CONFIG = "diffusers/vae/config.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hashed_files(folder: Path) -> dict[str, str]:
    """sha256 of every file of the prepared model (IR, extra parts it has, tokenizer, scheduler), by
    relative path."""
    names = [f"{p}.{ext}" for p in IR_PARTS for ext in ("xml", "bin")]
    names += [f"{p}.{ext}" for p in OPTIONAL_IR_PARTS if (folder / f"{p}.xml").is_file() for ext in ("xml", "bin")]
    names += [f"{xml.stem}.{ext}"
              for xml in sorted(folder.glob(f"{SHALLOW_UNET_PREFIX}*.xml")) for ext in ("xml", "bin")]
    for sub in ("tokenizer", "scheduler"):
        names += sorted(str(p.relative_to(folder)) for p in (folder / sub).rglob("*") if p.is_file())
    return {name: sha256_file(folder / name) for name in names}


def vae_config_factor(folder: Path) -> int:
    """The latent factor of the VAE config kept in ``folder``; 8 (every SD2 model's) without one."""
    try:
        return latent_factor_of(json.loads((folder / _VAE_CONFIG).read_text()))
    except (OSError, ValueError):
        return 8


def write(folder: Path, data: dict) -> None:
    """Write the manifest atomically (temp file + rename): it either exists whole or not at all."""
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **data}, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / MANIFEST)


@dataclass(frozen=True)
class Manifest:
    folder: Path
    data: dict
    sha256: str

    @property
    def task(self) -> str:
        return self.data["kind"]["task"]

    @property
    def kind(self) -> dict:
        return self.data["kind"]

    @property
    def latent_factor(self) -> int:
        """Image pixels per latent pixel along a side (diffusers' ``vae_scale_factor``), as recorded
        when the model was prepared; for a manifest without it, from the VAE's config, else SD2's 8."""
        recorded = self.kind.get("vae_scale_factor")
        return int(recorded) if recorded else vae_config_factor(self.folder)

    @property
    def variant(self) -> str:
        """``turbo`` for a few-step distilled model (SD-Turbo), else ``standard``: as recorded when
        the model was prepared; for a manifest without it, from the scheduler config it keeps."""
        recorded = self.kind.get("variant")
        if recorded:
            return recorded
        try:
            scheduler = json.loads((self.folder / "scheduler" / "scheduler_config.json").read_text())
        except (OSError, ValueError):
            scheduler = {}
        return variant_of(scheduler)

    @property
    def defaults(self) -> dict:
        """What a render uses for the steps, guidance and scheduler a request leaves out: the
        model's own (1 step and no guidance for SD-Turbo), as recorded when it was prepared, else
        its variant's."""
        return dict(self.kind.get("defaults") or DEFAULTS[self.variant])

    @property
    def decoders(self) -> tuple[str, ...]:
        """The decoders a render may choose: ``full`` always, ``tiny`` when the model carries TAESD."""
        return ("full", "tiny") if self.data.get("tiny_autoencoder") else ("full",)

    @property
    def cache_branches(self) -> tuple[int, ...]:
        """The DeepCache branches this model carries (``--cache-branch``); none for a model prepared
        before zoomq had DeepCache."""
        return tuple((self.data.get("deepcache") or {}).get("branches", ()))

    def prepare_command(self) -> str:
        """The ``zoomq prepare`` command that makes this model again, in its folder."""
        source = str(self.data.get("source", "SOURCE"))
        label, _, rest = source.partition(":")
        if label in ("tiny", "full-size-random"):
            flags = [f"--{label}"]
            fields = rest.split(":")
            if "inpainting" in fields:
                flags.append("--inpainting")
            for f in fields:
                if f.endswith("px") and f[:-2].isdigit():
                    flags.append(f"--size {f[:-2]}")
                elif f == "v_prediction":
                    flags.append("--prediction-type v_prediction")
                elif f == "turbo":
                    flags.append("--turbo")
                elif f.startswith("seed=") and f != "seed=0":
                    flags.append(f"--seed {f[5:]}")
        else:
            flags = [f"--model {source}"]
            if self.data.get("route") == "onnx":
                flags.append("--via-onnx")
        if self.data.get("weights", "fp16") != "fp16":
            flags.append(f"--weights {self.data['weights']}")
        return f"zoomq prepare {' '.join(flags)} --out {self.folder}"

    def verify_files(self) -> None:
        """Re-hash every file and raise ``ModelError`` on the first that changed or is missing."""
        for name, expected in self.data["files"].items():
            path = self.folder / name
            if not path.is_file():
                raise ModelError(f"{self.folder}: {name} is missing; prepare the model again")
            if sha256_file(path) != expected:
                raise ModelError(f"{self.folder}: {name} does not match its sha256 in {MANIFEST}")


def read(folder: Path) -> Manifest:
    """Read a prepared model folder's manifest or raise ``ModelError`` saying what to do."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        hint = (
            "it is a diffusers folder: convert it first with `zoomq prepare --model "
            f"{folder} --out DIR`"
            if (folder / "model_index.json").is_file()
            else "prepare one with `zoomq prepare`"
        )
        raise ModelError(f"{folder} is not a prepared zoomq model (no {MANIFEST}); {hint}")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ModelError(f"{path} is not valid JSON ({e}); prepare the model again") from None
    if data.get("format") != FORMAT:
        raise ModelError(f"{path}: manifest format {data.get('format')!r}, this zoomq reads {FORMAT}")
    return Manifest(folder=folder, data=data, sha256=hashlib.sha256(raw).hexdigest())
