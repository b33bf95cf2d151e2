"""Dense CRF (pydensecrf) over the score maps, with the paper's parameters.

Kept free of torch so that the CRF worker processes start fast.

Unary: -log of the scores normalised to sum to one per pixel (clipped at `PROB_FLOOR`). Normalising only
shifts each pixel's unaries by a constant common to all labels, which mean-field inference ignores, so
this is the same as the usual `unary_from_softmax(scores)`; the floor is what keeps -log finite.
Channels that are zero everywhere (classes gated out) are left out of the CRF, so they can never
appear in a mask however strong the pairwise terms are.
"""

from __future__ import annotations

import numpy as np

# The paper's Dense CRF (ConStruct, section on inference).
GAUSSIAN_SXY = 15
GAUSSIAN_COMPAT = 30
BILATERAL_SXY = 10
BILATERAL_SRGB = 20
BILATERAL_COMPAT = 50
CRF_ITERATIONS = 5
PROB_FLOOR = 1e-5  # as pydensecrf.utils.unary_from_softmax clips

CRF_PARAMS = {
    "gaussian_sxy": GAUSSIAN_SXY, "gaussian_compat": GAUSSIAN_COMPAT, "bilateral_sxy": BILATERAL_SXY,
    "bilateral_srgb": BILATERAL_SRGB, "bilateral_compat": BILATERAL_COMPAT, "iterations": CRF_ITERATIONS,
}


def crf_probabilities(image: np.ndarray, scores: np.ndarray, iterations: int = CRF_ITERATIONS) -> np.ndarray:
    """Mean-field marginals (K, H, W) over the K channels of `scores` (K, H, W) given an HxWx3 uint8 image."""
    import pydensecrf.densecrf as dcrf

    k, h, w = scores.shape
    if image.shape != (h, w, 3) or image.dtype != np.uint8:
        raise ValueError(f"image must be {h}x{w}x3 uint8 to match the scores, got {image.shape} {image.dtype}")
    probs = scores.astype(np.float32) + PROB_FLOOR
    probs /= probs.sum(axis=0, keepdims=True)
    unary = np.ascontiguousarray(-np.log(np.maximum(probs, PROB_FLOOR)).reshape(k, -1), dtype=np.float32)
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY, compat=GAUSSIAN_COMPAT)
    crf.addPairwiseBilateral(sxy=BILATERAL_SXY, srgb=BILATERAL_SRGB, rgbim=np.ascontiguousarray(image),
                             compat=BILATERAL_COMPAT)
    return np.array(crf.inference(iterations), dtype=np.float32).reshape(k, h, w)


def crf_refine(image: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Labels (H, W) int64, indices into the channels of `scores` (C + 1, H, W) (background last).

    Only channels with a non-zero score somewhere take part; one such channel labels every pixel."""
    scores = np.asarray(scores, dtype=np.float32)
    active = np.flatnonzero(scores.reshape(scores.shape[0], -1).max(axis=1) > 0)
    if active.size == 0:  # cannot happen with a background channel; keep argmax's answer
        return np.zeros(scores.shape[1:], dtype=np.int64)
    if active.size == 1:
        return np.full(scores.shape[1:], active[0], dtype=np.int64)
    q = crf_probabilities(image, scores[active])
    return active[q.argmax(axis=0)]
