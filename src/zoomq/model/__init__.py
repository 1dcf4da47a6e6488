"""Models: the manifest of a prepared model and what kind of SD2 model it is."""
