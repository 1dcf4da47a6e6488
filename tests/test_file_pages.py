"""Mapped weight files are kept out of the process's resident memory, without changing what they hold."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from zoomq.config import settings
from zoomq.render import file_pages
from zoomq.render.ov_models import CompiledParts

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux)")


def resident(path: Path) -> int:
    """Bytes of ``path``'s mappings resident in this process."""
    total, current = 0, None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                current = fields[5] if len(fields) > 5 else None
            elif fields[0] == "Rss:" and current == str(path.resolve()):
                total += int(fields[1]) * 1024
    return total


def test_read_only_mapping_is_dropped_and_reads_the_same(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert m[:] == data  # touches every page
        assert resident(path) >= len(data)
        assert file_pages.release([tmp_path]) >= len(data)  # a folder counts for the files in it
        assert resident(path) == 0
        assert m[:] == data


def test_written_private_mapping_is_left_alone(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(1 << 20))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as m:
        m[:4] = b"kept"  # a private copy of the page, held nowhere else
        assert file_pages.release([path]) == 0
        assert m[:4] == b"kept"


def test_compiled_parts_leave_no_weights_resident(tiny_t2i):
    parts = CompiledParts(tiny_t2i, settings())
    rng = np.random.default_rng(1)
    inputs = {"sample": rng.standard_normal((2, 4, 32, 32), dtype=np.float32),
              "timestep": np.array(500.0, dtype=np.float32),
              "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32)}
    first = parts.run("unet", **inputs)
    weights = tiny_t2i / "unet.bin"
    assert "unet.bin" in Path("/proc/self/maps").read_text()  # OpenVINO keeps it mapped
    assert resident(weights) == 0
    np.testing.assert_array_equal(parts.run("unet", **inputs), first)
    assert resident(weights) == 0  # running does not read it again


def test_compile_cache_blobs_are_not_kept_resident(tiny_t2i, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOOMQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ZOOMQ_COMPILE_CACHE", "on")
    shapes = {"sample": [2, 4, 32, 32], "timestep": [], "encoder_hidden_states": [2, 77, 32]}
    CompiledParts(tiny_t2i, settings()).compiled("unet", shapes)  # stores the blob
    loaded = CompiledParts(tiny_t2i, settings()).compiled("unet", shapes)
    assert loaded.get_property("LOADED_FROM_CACHE") is True
    blobs = list(settings().ov_cache_dir.glob("*.blob"))
    assert blobs and any(b.name in Path("/proc/self/maps").read_text() for b in blobs)
    assert sum(resident(b) for b in blobs) == 0
