"""The Python API: load a run, then segment one tile, a folder of tiles or whole slides.

    import construct

    seg = construct.load("runs/construct")        # a head run (`construct train`) or a student run
    pred = seg.predict("tile.png")                # or an (H, W, 3) uint8 RGB array
    pred.mask                                     # (H, W) uint8 mask values, as refine's PNGs hold
    pred.scores                                   # (C + 1, H, W) float32 in [0, 1], background last
    seg.predict_folder("tiles/", "masks/")        # the PNGs and refine.json of `construct refine --images`
    seg.segment_slide("slide.svs", "slides/")     # the folder and summary.csv of `construct slide`

Each call runs the one inference pipeline (tile source → predictor → gate, CRF or argmax → sink) with
the run's predictor, built once by `construct.inference.factory.load_predictor` and shared by the calls.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from construct.data.classes import ClassSet
from construct.data.dataset import read_image
from construct.data.sources import MemorySource, Tile
from construct.errors import ConstructError
from construct.head.scores import mask_index_lut
from construct.inference.factory import LoadedModel, PredictorOptions, load_predictor
from construct.inference.parts import Predictor
from construct.inference.pipeline import run_inference
from construct.inference.sinks import MemorySink
from construct.refine.config import DEFAULT_PRED_THRESHOLD, RefineConfig
from construct.refine.pipeline import RefineResult, refine
from construct.slide.defaults import MIN_AREA_UM2, VECTOR_MPP
from construct.slide.model import target_mpp
from construct.slide.run import SlideConfig, segment_slides
from construct.stain.methods import DEFAULT_METHOD as DEFAULT_STAIN_NORM

# The gates a tile without a dataset behind it can take: the model's own classifier, or every class.
# Naming the classes present (`present=`) gives the `labels` gate.
IMAGE_GATES = ("pred", "none")
LABELS_GATE = "labels"


@dataclass
class Prediction:
    """One tile's segmentation.

    mask: (H, W) uint8, the class set's mask values (`classes.classes[i].mask_index`, background
        `classes.background_index`): what refine writes into its PNGs.
    scores: (C + 1, H, W) float32 in [0, 1], one map per class in the class set's order, background last
        (gated-out classes are 0).
    """

    mask: np.ndarray
    scores: np.ndarray


class Segmenter:
    """A run's model, loaded once (see `load`)."""

    def __init__(self, model: LoadedModel):
        self.model = model

    @property
    def classes(self) -> ClassSet:
        return self.model.classes

    @property
    def kind(self) -> str:
        """"head" (`construct train`: live CONCH + head) or "student" (`construct distill`)."""
        return self.model.kind

    @property
    def tile_size(self) -> int:
        """Side in px of the square tiles `predict` takes."""
        return self.model.tile_size

    @property
    def mpp(self) -> float | None:
        """µm/px of the run's training tiles, when recorded: slides are tiled at it."""
        return self.model.mpp

    @property
    def predictor(self) -> Predictor:
        return self.model.predictor

    def __repr__(self) -> str:
        return (f"Segmenter(run={str(self.model.run)!r}, kind={self.kind!r}, classes={self.classes.names}, "
                f"tile_size={self.tile_size}, tta={self.model.tta})")

    def predict(self, image: np.ndarray | str | Path, present: Sequence[str] | None = None, gate: str = "pred",
                crf: bool | None = None, pred_threshold: float = DEFAULT_PRED_THRESHOLD) -> Prediction:
        """Segment one tile: an image file or an (H, W, 3) uint8 RGB array, H = W = `tile_size`.

        present: the names of the classes known to be in the tile (the `labels` gate, as for train tiles);
            otherwise `gate` `pred` lets in the classes the model's classifier finds (probability above
            `pred_threshold`, in [0, 1]) and `none` every class.
        crf: the Dense CRF (True) or argmax (False); None: the run's default (CRF for a head run).
        One tile is too little to estimate a stain from, so `predict` does not normalise it: for tiles of
        another lab, use `predict_folder` or `segment_slide` (one estimate over all their tiles).
        """
        tile = Tile("image", self._image(image), self._labels(present))
        gate = self._gate(gate, present)
        sink = MemorySink()
        run_inference(MemorySource([tile]), self.predictor, [sink], gate, crf=self._crf(crf), batch_size=1,
                      pred_threshold=pred_threshold, progress=False)
        scores, labels = sink.results[tile.stem]
        return Prediction(mask_index_lut(self.classes)[labels], scores)

    def predict_folder(self, folder: str | Path, out: str | Path, gate: str | None = None, crf: bool | None = None,
                       pred_threshold: float = DEFAULT_PRED_THRESHOLD, batch_size: int = 8, crf_workers: int = 2,
                       loader_workers: int = 1, save_scores: bool = False, stain_norm: str = DEFAULT_STAIN_NORM,
                       progress: bool = True) -> RefineResult:
        """`construct refine --images FOLDER --out OUT`: `OUT/<stem>.png` masks (mask values) and
        `OUT/refine.json`; with `save_scores`, `OUT/scores/<stem>.npy` float16 (C + 1, H, W). Rerunning
        resumes. gate: `pred` (the model's classifier, default) or `none` (every class). stain_norm: the
        folder's stain, estimated once over its tiles, normalised to the run's reference (`none`: as is)."""
        o = self.model.options
        cfg = RefineConfig(run=self.model.run, images=Path(folder), out=Path(out), gate=gate,
                           pred_threshold=pred_threshold, tta=o.tta, crf=crf, batch_size=batch_size,
                           workers=crf_workers, loader_workers=loader_workers, save_scores=save_scores,
                           head=o.head, conch=o.conch, device=o.device, precision=o.precision,
                           stain_norm=stain_norm)
        return refine(cfg, progress=progress, model=self.model)

    def segment_slide(self, path: str | Path, out: str | Path, mpp: float | None = None,
                      slide_mpp: float | None = None, overlap: int | None = None,
                      tissue_threshold: float | None = None, batch_size: int = 16,
                      pred_threshold: float = DEFAULT_PRED_THRESHOLD, no_upsample: bool = False,
                      mask_values: str = "dataset", vector_mpp: float = VECTOR_MPP,
                      min_area_um2: float = MIN_AREA_UM2, stain_norm: str = DEFAULT_STAIN_NORM,
                      progress: bool = True) -> dict:
        """`construct slide PATH --out OUT`: `OUT/<slide stem>/` (mask.ome.tif, annotations.geojson,
        overlay.png, tissue.png, summary.json) and `OUT/summary.csv`; returns the slide's summary.json.
        A slide finished before is not redone. mpp: µm/px to tile at (default the run's, `self.mpp`);
        slide_mpp: the slide's own level-0 µm/px, overriding its metadata. The other arguments are those of
        `construct slide` (overlap: default a quarter of the training tile)."""
        cfg = SlideConfig(out=Path(out), target_mpp=target_mpp(self.model, mpp), slide_mpp=slide_mpp,
                          no_upsample=no_upsample, mask_values=mask_values,
                          overlap=self.model.default_overlap if overlap is None else overlap,
                          tissue_threshold=tissue_threshold, batch_size=batch_size, pred_threshold=pred_threshold,
                          vector_mpp=vector_mpp, min_area_um2=min_area_um2, meta={"model": self.model.describe()},
                          stain_norm=stain_norm, run=self.model.run)
        result = segment_slides([Path(path)], cfg, self.predictor, progress=progress, echo=lambda line: None)
        if result.failed:
            raise ConstructError(result.failed[0][1])
        if result.done:
            return result.done[0]
        return json.loads((cfg.out / Path(path).stem / "summary.json").read_text())

    def _image(self, image: np.ndarray | str | Path) -> np.ndarray:
        size = self.tile_size
        if isinstance(image, (str, Path)):
            return read_image(Path(image), size)
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.shape != (size, size, 3):
            raise ConstructError(f"image: expected a ({size}, {size}, 3) uint8 RGB array (the run's tiles), "
                                 f"got {image.shape} {image.dtype}")
        return image

    def _labels(self, present: Sequence[str] | None) -> np.ndarray | None:
        if present is None:
            return None
        unknown = sorted(set(present) - set(self.classes.names))
        if unknown:
            raise ConstructError(f"present: {', '.join(unknown)} not in the run's classes "
                                 f"({', '.join(self.classes.names)})")
        return np.array([name in present for name in self.classes.names], np.uint8)

    def _gate(self, gate: str, present: Sequence[str] | None) -> str:
        if present is not None:
            return LABELS_GATE
        if gate not in IMAGE_GATES:
            raise ConstructError(f"gate {gate!r}: expected one of {', '.join(IMAGE_GATES)} "
                                 f"(or name the classes with present=)")
        return gate

    def _crf(self, crf: bool | None) -> bool:
        return self.model.crf if crf is None else crf


def load(run: str | Path, head: str = "best", device: str = "auto", precision: str | None = None,
         tta: bool | None = None, conch: str | None = None, tile_size: int | None = None) -> Segmenter:
    """Load a run folder for segmentation: a head run (`construct train`, live CONCH + the head) or a
    student run (`construct distill`, the student network alone).

    head: `best` weights (falling back to `last` when no validation chose one) or `last`.
    device: auto, cpu, cuda, cuda:1, ...
    precision: fp32 or bf16 for a head run's CONCH; None: the precision its features were extracted in.
    tta: None: the run's refine default (6-way for a head run, none for a student); `construct slide`
        runs without TTA unless asked, so pass tta=False for its outputs.
    conch: CONCH weights when not where the run recorded them (fingerprint-checked).
    tile_size: the window a student run reads slides in (a multiple of its stride; `construct slide
        --tile-size`); None: its training tile.
    """
    return Segmenter(load_predictor(run, PredictorOptions(head=head, device=device, precision=precision, tta=tta,
                                                          conch=conch, tile_size=tile_size)))
