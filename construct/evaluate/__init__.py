"""eval phase: score predicted masks with the paper's protocol, compare with Table 2, write a report."""

from construct.evaluate.gallery import nearest_tiles, prototype_gallery
from construct.metrics import PROTOCOLS
from construct.evaluate.run import evaluate_predictions
from construct.evaluate.table import PAPER_TABLE2, format_table

__all__ = ["PAPER_TABLE2", "PROTOCOLS", "evaluate_predictions", "format_table", "nearest_tiles", "prototype_gallery"]
