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

MANIFEST = "zoomq.json"
FORMAT = 1
IR_PARTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hashed_files(folder: Path) -> dict[str, str]:
    """sha256 of every file of the prepared model (IR, tokenizer, scheduler), by relative path."""
    names = [f"{p}.{ext}" for p in IR_PARTS for ext in ("xml", "bin")]
    for sub in ("tokenizer", "scheduler"):
        names += sorted(str(p.relative_to(folder)) for p in (folder / sub).rglob("*") if p.is_file())
    return {name: sha256_file(folder / name) for name in names}


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
