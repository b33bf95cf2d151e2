"""Stain: a run's stain reference (estimate, reference), inputs normalised to it (normalize, predictor,
runs) and HED augmentation for students (augment). Submodules are imported where used: the CLI reads
`methods` without loading torch."""
