"""``zoomq prepare``: turn a diffusers SD2 pipeline (hub id or local folder) into a zoomq model
folder — OpenVINO IR of the four sub-models, tokenizer, scheduler config and a manifest.

Everything is written to a hidden staging folder next to ``out`` and renamed into place only when
complete, so a failed or interrupted conversion never leaves a folder that looks like a model.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from zoomq import __version__
from zoomq.errors import ModelError, PrepareError, ZoomqError
from zoomq.model import manifest as mf
from zoomq.model.kind import ModelKind
from zoomq.model_prep import hub
from zoomq.model_prep import tiny_autoencoder as taesd
from zoomq.model_prep.detect import detect

log = logging.getLogger(__name__)

ROUTES = ("direct", "onnx")
#: DeepCache branches a model is prepared with unless told otherwise (``model_prep.deepcache``;
#: a literal here: that module imports torch)
DEFAULT_CACHE_BRANCHES = (0,)
WEIGHTS = ("fp16", "int8", "int8-hybrid")
_HUB_FILES = [
    "model_index.json",
    "scheduler/*",
    "tokenizer/*",
    "*/config.json",
    "text_encoder/model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
]
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _versions() -> dict[str, str]:
    import diffusers
    import openvino
    import torch
    import transformers

    return {
        "zoomq": __version__,
        "openvino": openvino.get_version(),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def resolve_source(model: str) -> tuple[Path, str]:
    """A local folder as it is, or a hub id downloaded (or found in the hub cache)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"--model {model}: is a file; pass a diffusers pipeline folder or a hub id")
        return path.resolve(), "folder"
    if not hub.is_hub_id(model):
        raise ModelError(f"--model {model}: no such folder, and not a Hugging Face hub id (owner/name)")
    return hub.download(model, "--model", _HUB_FILES), "hub"


def _weights_size(folder: Path) -> int:
    return sum(
        p.stat().st_size
        for sub in ("unet", "vae", "text_encoder")
        for p in (folder / sub).glob("*")
        if p.suffix in _WEIGHT_SUFFIXES
    )


def _check_space(where: Path, needed: int) -> None:
    free = shutil.disk_usage(where).free
    if free < needed:
        raise PrepareError(
            f"not enough disk space in {where}: the model needs about {needed / 2**20:.0f} MiB, "
            f"{free / 2**20:.0f} MiB free; free some space or choose another --out"
        )


def _existing(out: Path, source: str, route: str, weights: str,
              cache_branches: tuple[int, ...] = ()) -> mf.Manifest | None:
    """The manifest of an identical model already in ``out``, or None to make it (again, if an
    older conversion made it or it lacks a DeepCache branch asked for); raises if ``out`` holds
    something else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise PrepareError(f"--out {out}: is a file; choose a folder")
    if (out / mf.MANIFEST).is_file():
        current = mf.read(out)
        same = (current.data.get("source"), current.data.get("route"), current.data.get("weights"))
        if same == (source, route, weights):
            if not set(cache_branches) <= set(current.cache_branches):
                return None
            return current if current.data.get("conversion", 1) == _conversion() else None
        raise PrepareError(
            f"--out {out}: already holds another model ({current.data.get('source')}, "
            f"{current.data.get('route')}, {current.data.get('weights')}); choose another --out or remove it"
        )
    if any(out.iterdir()):
        raise PrepareError(f"--out {out}: exists, is not empty and holds no zoomq model; choose another --out")
    return None


def _conversion() -> int:
    from zoomq.model_prep.convert import CONVERSION  # torch: imported only when a model is at hand

    return CONVERSION


def _disk_full(error: BaseException, where: Path) -> bool:
    """Whether ``error`` came from a full disk; libraries (safetensors, OpenVINO) wrap ENOSPC in
    their own exception types, so the text and the free space count as evidence too."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    if "No space left on device" in str(error):
        return True
    try:
        return shutil.disk_usage(where).free < 2**20
    except OSError:
        return False


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A hidden folder beside ``out`` that becomes ``out`` on success and vanishes on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        if out.exists():  # empty, or the same model from an older conversion (see _existing)
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, out)
    except BaseException as e:
        full = not isinstance(e, ZoomqError) and _disk_full(e, stage)
        shutil.rmtree(stage, ignore_errors=True)
        if full:
            raise PrepareError(f"no space left on the disk of {out.parent} while writing the model: {e}") from e
        raise


def _convert(
    source_dir: Path,
    kind: ModelKind,
    stage: Path,
    *,
    source: str,
    source_kind: str,
    route: str,
    weights: str,
    report: Callable[[str], None],
    tiny: Callable[[Path], dict] | None = None,
    cache_branches: tuple[int, ...] = (),
) -> None:
    """Convert the diffusers folder ``source_dir`` into ``stage``; the manifest comes last.
    ``tiny`` converts a tiny autoencoder into a folder and returns its manifest record;
    ``cache_branches``: the DeepCache branches to carry (``model_prep.deepcache``)."""
    report(f"{source}: {kind.family} {kind.task}, {kind.native_size} px, {kind.prediction_type}")
    for sub in ("tokenizer", "scheduler"):
        shutil.copytree(source_dir / sub, stage / sub)
    unet_config = json.loads((source_dir / "unet" / "config.json").read_text())
    cache_branches = _checked_branches(cache_branches, unet_config)
    _convert_parts(source_dir, kind, stage, route=route, weights=weights, report=report,
                   cache_branches=cache_branches)
    data = {
        "source": source,
        "source_kind": source_kind,
        "kind": kind.to_dict(),
        "route": route,
        "weights": weights,
        **_conversion_record(stage, tiny(stage) if tiny is not None else None, cache_branches, unet_config),
    }
    mf.write(stage, data)
    if weights == "int8-hybrid":
        from zoomq.model_prep.hybrid import quantize_unet

        quantize_unet(stage, report=report)
        mf.write(stage, {**data, "files": mf.hashed_files(stage)})


def _checked_branches(cache_branches: tuple[int, ...], unet_config: dict) -> tuple[int, ...]:
    from zoomq.model_prep import deepcache_export

    try:
        return deepcache_export.check_branches(cache_branches, unet_config)
    except ValueError as e:
        raise PrepareError(f"--cache-branches: {e}") from None


def _convert_parts(source_dir: Path, kind: ModelKind, stage: Path, *, route: str, weights: str,
                   report: Callable[[str], None], cache_branches: tuple[int, ...]) -> None:
    """The model's sub-models into OpenVINO IR, DeepCache's shallow UNets among them."""
    from zoomq.model_prep import deepcache_export
    from zoomq.model_prep.convert import parts
    from zoomq.model_prep.export import convert_part

    # int8-hybrid converts at fp16, then quantizes the UNet calibrated on the converted model.
    part_weights = "fp16" if weights == "int8-hybrid" else weights
    for part in parts(source_dir, kind.unet_in_channels, kind.text_hidden_size, kind.latent_channels,
                      cache_branches):
        report(f"converting {part.name} ({route}, {part_weights} weights)")
        convert_part(source_dir, part, stage, route=route, weights=part_weights)
    if cache_branches:
        report(f"converting DeepCache's shallow UNet for branch {', '.join(map(str, cache_branches))} "
               f"({route}, fp16 weights)")
        deepcache_export.convert_shallow_parts(source_dir, stage, cache_branches, kind.unet_in_channels,
                                        kind.text_hidden_size, route=route, weights=part_weights)


def _conversion_record(stage: Path, tiny_record: dict | None, cache_branches: tuple[int, ...],
                       unet_config: dict) -> dict:
    """The manifest's record of the conversion: its files, the versions that made them, the extras."""
    from zoomq.model_prep import deepcache_export
    from zoomq.model_prep.convert import CONVERSION

    data: dict = {
        "text_max_length": 77,
        "conversion": CONVERSION,
        "files": mf.hashed_files(stage),
        "versions": _versions(),
    }
    if tiny_record:
        data["tiny_autoencoder"] = tiny_record
    if cache_branches:
        data["deepcache"] = {"branches": list(cache_branches),
                             "branch_count": deepcache_export.branch_count(unet_config)}
    return data


def _build(
    out: Path,
    *,
    source: str,
    route: str,
    weights: str,
    report: Callable[[str], None],
    fill: Callable[[Path], None],
    tiny: taesd.Converter | None = None,
    cache_branches: tuple[int, ...] = (),
) -> mf.Manifest:
    """Run ``fill(stage)`` unless ``out`` already holds this model; move the result into place.
    ``tiny``: the tiny autoencoder the model should carry; one that a model already in ``out``
    lacks is added to it in place."""
    done = _existing(out, source, route, weights, cache_branches)
    if done and tiny is not None and (done.data.get("tiny_autoencoder") or {}).get("source") != tiny.label:
        report(f"{out} already holds this model; adding the tiny autoencoder {tiny.label}")
        try:
            taesd.add_to_model(out, done, tiny)
        except ZoomqError:
            raise
        except Exception as e:
            raise PrepareError(f"adding the tiny autoencoder {tiny.label} to {out} failed: "
                               f"{type(e).__name__}: {e}") from e
        return mf.read(out)
    if done:
        report(f"{out} already holds this model; nothing to do")
        return done
    if (out / mf.MANIFEST).is_file():
        held = mf.read(out)
        if held.data.get("conversion", 1) == _conversion() and not set(cache_branches) <= set(held.cache_branches):
            report(f"{out} holds this model without DeepCache branch "
                   f"{', '.join(map(str, sorted(set(cache_branches) - set(held.cache_branches))))}; preparing it again")
        else:
            report(f"{out} holds this model from an older zoomq conversion; preparing it again")
    try:
        with _staging(out) as stage:
            fill(stage)
    except ZoomqError:
        raise
    except Exception as e:
        raise PrepareError(f"preparing {source} failed: {type(e).__name__}: {e}") from e
    return mf.read(out)


def _check_options(route: str, weights: str) -> None:
    if route not in ROUTES:
        raise PrepareError(f"route {route!r}: must be one of {', '.join(ROUTES)}")
    if weights not in WEIGHTS:
        raise PrepareError(f"--weights {weights}: must be one of {', '.join(WEIGHTS)}")


def prepare(
    model: str,
    out: Path,
    *,
    route: str = "direct",
    weights: str = "fp16",
    report: Callable[[str], None] = log.info,
    tiny_autoencoder: str | None = None,
    cache_branches: tuple[int, ...] = DEFAULT_CACHE_BRANCHES,
) -> mf.Manifest:
    """Convert a diffusers SD2 pipeline (local folder or hub id) into the zoomq model folder ``out``;
    ``tiny_autoencoder`` (hub id, ``AutoencoderTiny`` folder or ``random``) adds TAESD's decoder;
    ``cache_branches``: the DeepCache branches renders may use (``--cache-branch``)."""
    _check_options(route, weights)
    out = Path(out).expanduser().absolute()
    source_dir, source_kind = resolve_source(model)
    source = str(source_dir) if source_kind == "folder" else model
    kind = detect(source_dir)  # before anything is written: a wrong folder fails fast
    wanted = taesd.wanted(out, source, tiny_autoencoder, 0)
    tiny = taesd.converter(*wanted, kind.latent_channels, kind.vae_scale_factor, route=route,
                           report=report) if wanted else None

    def fill(stage: Path) -> None:
        _check_space(stage, _weights_size(source_dir) * 3 // 4 + 2**20)
        _convert(source_dir, kind, stage, source=source, source_kind=source_kind, route=route, weights=weights,
                 report=report, tiny=tiny, cache_branches=tuple(cache_branches))

    return _build(out, source=source, route=route, weights=weights, report=report, fill=fill, tiny=tiny,
                  cache_branches=tuple(cache_branches))


def prepare_random(
    out: Path,
    *,
    full: bool,
    inpainting: bool = False,
    size: int | None = None,
    prediction_type: str = "epsilon",
    seed: int = 0,
    route: str = "direct",
    weights: str = "fp16",
    latent_factor: int = 8,
    report: Callable[[str], None] = log.info,
    tiny_autoencoder: str | None = None,
    turbo: bool = False,
    cache_branches: tuple[int, ...] = DEFAULT_CACHE_BRANCHES,
) -> mf.Manifest:
    """Build a seeded random-weight SD2 pipeline (miniature or full-size), keep its diffusers
    folder in ``out/diffusers`` and convert it into ``out``. ``latent_factor`` is its VAE's
    downsampling: 8 as in every SD2 model, another power of two to test that nothing assumes 8.
    ``tiny_autoencoder``: as for ``prepare``; ``random`` builds one seeded ``seed + 3`` and keeps it
    in ``out/diffusers/tiny_autoencoder``. ``turbo``: with SD-Turbo's scheduler, which makes the
    model an SD-Turbo kind, its defaults included (see ``detect.variant_of``)."""
    from zoomq.model_prep.architectures import build_random_pipeline

    _check_options(route, weights)
    size = size or (512 if full else 256)
    _check_random(size, latent_factor, prediction_type, turbo)
    out = Path(out).expanduser().absolute()
    label = "full-size-random" if full else "tiny"
    task = "inpainting" if inpainting else "text-to-image"
    source = _random_source(label, task, size, prediction_type, seed, latent_factor, turbo)
    wanted = taesd.wanted(out, source, tiny_autoencoder, seed + 3)  # the random pipelines' latents: 4 channels
    tiny = taesd.converter(*wanted, 4, latent_factor, route=route, report=report,
                           keep=partial(taesd.kept_folder, out)) if wanted else None

    def fill(stage: Path) -> None:
        report(f"building a {label} {task} SD2 pipeline ({size} px, {prediction_type}, seed {seed})")
        build_random_pipeline(stage / "diffusers", full=full, inpainting=inpainting, size=size,
                              prediction_type=prediction_type, seed=seed, latent_factor=latent_factor, turbo=turbo)
        _convert(stage / "diffusers", detect(stage / "diffusers"), stage, source=source, source_kind=label,
                 route=route, weights=weights, report=report, tiny=tiny, cache_branches=tuple(cache_branches))

    return _build(out, source=source, route=route, weights=weights, report=report, fill=fill, tiny=tiny,
                  cache_branches=tuple(cache_branches))


def _check_random(size: int, latent_factor: int, prediction_type: str, turbo: bool) -> None:
    step = math.lcm(8, latent_factor)
    if size % step:
        raise PrepareError(f"--size {size}: must be a multiple of {step}")
    if turbo and prediction_type != "epsilon":
        raise PrepareError(f"--prediction-type {prediction_type}: SD-Turbo predicts epsilon; --turbo takes no other")


def _random_source(label: str, task: str, size: int, prediction_type: str, seed: int, latent_factor: int,
                   turbo: bool) -> str:
    """What a random pipeline's manifest records as its source: it names everything its weights follow from."""
    source = f"{label}:{task}:{size}px:{prediction_type}:seed={seed}"
    if latent_factor != 8:  # the usual factor stays unnamed: sources of existing models keep their spelling
        source += f":latent-factor={latent_factor}"
    if turbo:
        source += ":turbo"
    return source
