"""zoomq: Stable Diffusion 2 on CPUs with OpenVINO, spread over a queue of workers."""

__version__ = "0.1.0"
