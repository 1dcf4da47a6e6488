"""PNG files that carry their recipe in text chunks, readable by any PNG tool."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import IO

from PIL import Image
from PIL.PngImagePlugin import PngImageFile, PngInfo

from zoomq.errors import InvalidParameter

RECIPE_KEY = "zoomq"


def encode(image: Image.Image, recipe: dict) -> bytes:
    """PNG bytes of ``image`` with one text chunk per recipe field plus the whole recipe as JSON."""
    info = PngInfo()
    for key, value in recipe.items():
        info.add_text(key, str(value))
    info.add_text(RECIPE_KEY, json.dumps(recipe, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save(image: Image.Image, path: Path, recipe: dict) -> None:
    """Save ``image`` as a PNG carrying ``recipe``; written whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode(image, recipe))
    tmp.replace(path)


def read_recipe(path: Path | IO[bytes]) -> dict:
    with Image.open(path) as image:
        assert isinstance(image, PngImageFile), "the recipe is in a PNG's text chunks"
        return json.loads(image.text[RECIPE_KEY])


def load_image(path: Path | str | IO[bytes], param: str, mode: str = "RGB") -> Image.Image:
    """Open an image file or raise ``InvalidParameter`` naming ``param``."""
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, ValueError) as e:
        raise InvalidParameter(param, str(path), f"cannot be read as an image ({e})") from None
