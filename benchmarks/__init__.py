"""zoomq's development benchmarks: against diffusers and the machine, run as ``python -m benchmarks``
from the repository root; they write their sections of docs/benchmarks.md (see README.md here)."""
