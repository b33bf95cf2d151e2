"""The stain settings' names and defaults, importable without torch (the CLI reads them at start-up)."""

METHODS = ("macenko", "reinhard", "none")
DEFAULT_METHOD = "reinhard"  # chosen by benchmarks/stain.py (benchmarks/README.md, "stain")
DEFAULT_AUGMENT = 0.05  # HED strength for students (Tellez et al. 2018's light setting)
DEFAULT_LAB_AUGMENT = 0.1  # LAB (Reinhard-style) strength for students: tissue mean moved up to 5 ΔE per channel
