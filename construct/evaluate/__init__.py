"""eval phase: score predicted masks with the paper's protocol, compare with Table 2, write a report."""

from construct.lazy import lazy_exports

_EXPORTS = {"nearest_tiles": "gallery", "prototype_gallery": "gallery",
            "evaluate_predictions": "run", "PAPER_TABLE2": "table", "format_table": "table"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
