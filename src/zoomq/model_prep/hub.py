"""Fetching from the Hugging Face hub: one place for what counts as a hub id and what a failed
download says (machines without network are common where zoomq runs)."""

from __future__ import annotations

import re
from pathlib import Path

from zoomq.errors import PrepareError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_hub_id(name: str) -> bool:
    return bool(HUB_ID.fullmatch(name))


def download(hub_id: str, option: str, files: list[str]) -> Path:
    """The local folder of ``hub_id`` with ``files`` (glob patterns), downloaded or from the hub
    cache; raises ``PrepareError`` naming ``option`` and how to bring the files over by hand."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, allow_patterns=files))
    except Exception as e:  # the hub client raises many kinds; all mean "could not fetch"
        raise PrepareError(
            f"{option} {hub_id}: cannot fetch it from the Hugging Face hub ({type(e).__name__}); "
            "if this machine has no network, download it where there is one "
            f"(`huggingface-cli download {hub_id} --local-dir DIR`), copy DIR here and pass {option} DIR"
        ) from None
