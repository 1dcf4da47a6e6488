"""The ``zoomq`` command line: thin argument parsing over the library."""
