"""Video files through the ffmpeg binary that imageio-ffmpeg ships: streaming H.264 segments,
lossless concatenation, GIF, and probing.

Every segment is encoded with identical settings (H.264 High, yuv420p, even size, fixed fps), so
segments concatenate with ``-c copy`` — no second encode, no quality loss — into an MP4 that plays
in browsers (``+faststart``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

from zoomq.errors import VideoError

CRF = 18  # visually lossless for this kind of material; the same for every segment


def _ffmpeg(*args: str) -> None:
    proc = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args],
        capture_output=True, text=True,
    )
    if proc.returncode:
        raise VideoError(f"ffmpeg failed: {proc.stderr.strip()[-800:]}")


def encode(frames: Iterable[Image.Image], path: Path, fps: int) -> int:
    """Encode frames as they come (never all in memory) into an H.264 MP4; returns the count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part.mp4")
    writer = None
    count = 0
    try:
        for image in frames:
            if writer is None:
                if image.width % 2 or image.height % 2:
                    raise VideoError(f"frame size {image.size} is odd; H.264 in yuv420p needs even sizes")
                writer = imageio_ffmpeg.write_frames(
                    str(tmp), image.size, fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                    macro_block_size=2, quality=None,
                    output_params=["-crf", str(CRF), "-preset", "medium", "-profile:v", "high"],
                )
                writer.send(None)
            writer.send(np.ascontiguousarray(np.asarray(image.convert("RGB"))))
            count += 1
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    if writer is None:
        raise VideoError(f"no frames to encode into {path}")
    writer.close()
    os.replace(tmp, path)
    return count


def concat(segments: list[Path], out: Path) -> None:
    """Join segments without re-encoding; the MP4 index goes first so browsers start at once."""
    out = Path(out)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=out.parent, delete=False) as f:
        for segment in segments:
            f.write("file '{}'\n".format(str(Path(segment).resolve()).replace("'", r"'\''")))
        listing = f.name
    tmp = out.with_name(out.name + ".part.mp4")
    try:
        _ffmpeg("-f", "concat", "-safe", "0", "-i", listing, "-c", "copy", "-movflags", "+faststart", str(tmp))
        os.replace(tmp, out)
    finally:
        os.unlink(listing)
        tmp.unlink(missing_ok=True)


def gif_from(video: Path, out: Path) -> None:
    """A looping GIF of ``video`` with a palette made for it, frame timing kept from the video."""
    out = Path(out)
    tmp = out.with_name(out.name + ".part.gif")
    try:
        _ffmpeg(
            "-i", str(video), "-vf", "split[a][b];[a]palettegen=stats_mode=diff[p];[b][p]paletteuse",
            "-loop", "0", str(tmp),
        )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    size: tuple[int, int]
    codec: str
    pix_fmt: str


def probe(path: Path) -> VideoInfo:
    """Frame count, fps, size, codec and pixel format, as ffmpeg reads them back."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    reader.close()
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                          capture_output=True, text=True)
    stream = re.search(r"Video: (\w+)[^,]*, (\w+)", proc.stderr)
    return VideoInfo(
        frames=frames,
        fps=float(meta["fps"]),
        size=tuple(meta["size"]),
        codec=stream.group(1) if stream else meta.get("codec", "?"),
        pix_fmt=stream.group(2) if stream else "?",
    )


def read_frames(path: Path) -> Iterable[np.ndarray]:
    """Decoded RGB frames of a video, one at a time."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    for raw in reader:
        yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)
