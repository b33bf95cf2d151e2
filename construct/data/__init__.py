"""Datasets: the BCSS-WSSS layout, class sets, synthetic data."""

SPLITS = ("train", "valid", "test")  # the layout's splits, in order (light: the CLI offers them as choices)
