"""What a failed job tells its submitter: a short category and a message written for users.

A worker's exception text may hold model paths, bucket endpoints, URLs or ffmpeg's output: that goes
to the worker's log with the job id, and the job record gets ``public_error(...)``, e.g.
"render failed: out of memory", "invalid parameter: steps: …", "model not found: NAME". Only
messages written for users pass through (``InvalidParameter`` and the two below); the rest are named
by their category alone.
"""

from __future__ import annotations

from zoomq.errors import (
    ArtifactMissing,
    ArtifactStoreError,
    InvalidParameter,
    ModelError,
    ModelNotServed,
    VideoError,
)

SEE_LOG = "the worker's log has the details"


def public_error(error: BaseException, model: str) -> str:
    """The ``error`` field of a job that ``error`` ended, for a job of ``model``."""
    if isinstance(error, InvalidParameter):
        return f"invalid parameter: {error}"  # names the parameter, the value and the rule: no paths
    if isinstance(error, ModelNotServed):
        return f"model not found: {error.model}"
    if isinstance(error, ArtifactMissing):
        return f"artifact missing: {error}"  # the job's own keys, never the store's location
    if isinstance(error, ModelError):
        return f"model unavailable: model {model!r} cannot be loaded or cannot serve this job; {SEE_LOG}"
    if isinstance(error, ArtifactStoreError):
        return f"artifact store failed: a result could not be read or written; {SEE_LOG}"
    if isinstance(error, VideoError):
        return f"video encoding failed; {SEE_LOG}"
    if isinstance(error, MemoryError) or "bad_alloc" in str(error):  # Python's, or OpenVINO's C++ one
        return "render failed: out of memory"
    return f"render failed: internal error ({type(error).__name__}); {SEE_LOG}"
