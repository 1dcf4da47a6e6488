"""Processes on one machine: a private Redis and workers (`zoomq up`, tests), and how to size them."""
