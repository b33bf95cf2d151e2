"""Fast model selection from a validation store: fused CAMs → masks → mIoU (no TTA, no CRF)."""

from __future__ import annotations

import numpy as np
import torch

from construct.head.model import ConStructHead
from construct.head.scores import score_maps, scores_to_masks
from construct.metrics import confusion_matrix, scores
from construct.runtime import autocast
from construct.store import FeatureStore


@torch.no_grad()
def validate(head: ConStructHead, store: FeatureStore, device: torch.device, batch_size: int = 32,
             precision: str = "fp32") -> dict:
    """mIoU/mDice (%) of gated fused-CAM masks at the stored mask resolution (the paper's gt gating)."""
    was_training = head.training
    head.eval()
    classes = store.classes
    n = classes.n_mask_values
    conf = np.zeros((n, n), dtype=np.int64)
    size = store.shape("mask")[-1]
    for start in range(0, store.n_rows, batch_size):
        rows = np.arange(start, min(start + batch_size, store.n_rows))
        data = store.read_batch(rows, head.input_taps + ("mask",))
        taps = {k: torch.from_numpy(data[k]).to(device) for k in head.input_taps}
        with autocast(device, precision):
            out = head(taps)
        cam = head.fused_cam(out.float(), size=size)
        pred = scores_to_masks(score_maps(cam, torch.from_numpy(data["labels"]).to(device)), classes)
        conf += confusion_matrix(data["mask"].astype(np.int64), pred, n)
    head.train(was_training)
    s = scores(conf, classes)
    return {"mIoU": s.miou, "mDice": s.mdice, "FwIoU": s.fwiou,
            "IoU": {c.name: float(s.iou[c.mask_index]) for c in classes.classes}}
