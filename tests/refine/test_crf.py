"""Dense CRF with the paper's parameters: labels follow image edges and gated-out classes never appear."""

from __future__ import annotations

import math

import numpy as np

from construct.inference import crf
from construct.inference.crf import crf_refine, softmax_unary

H = W = 224
EDGE = 112  # the image's vertical edge


def two_tissue_image() -> np.ndarray:
    image = np.empty((H, W, 3), np.uint8)
    image[:, :EDGE] = (170, 60, 130)  # dark, purple (nuclei-rich)
    image[:, EDGE:] = (240, 200, 230)  # pale pink
    return image


def noisy_scores(boundary: float = 104, width: float = 40, noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """Class 0 left, class 1 right, with a soft transition centred off the image edge and pixel noise;
    channel 2 (a gated-out class) is zero and channel 3 is a faint background."""
    rng = np.random.default_rng(seed)
    a = 0.5 - 0.5 * np.tanh((np.arange(W) - boundary) / width * 2)
    left = np.clip(a[None, :] + rng.normal(0, noise, (H, W)), 0.01, 0.99)
    scores = np.zeros((4, H, W), np.float32)
    scores[0], scores[1] = left, 1 - left
    scores[3] = 0.02
    return scores


def test_the_crf_runs_with_the_papers_parameters():
    """The marginals equal those of a Dense CRF built here by hand with the paper's numbers (Gaussian sxy 15,
    compat 30; bilateral sxy 10, srgb 20, compat 50; 5 mean-field iterations): the constants reach the CRF,
    each in its place."""
    import pydensecrf.densecrf as dcrf

    image, scores = two_tissue_image(), noisy_scores()[[0, 1, 3]]
    by_hand = dcrf.DenseCRF2D(W, H, 3)
    by_hand.setUnaryEnergy(softmax_unary(scores))
    by_hand.addPairwiseGaussian(sxy=15, compat=30)
    by_hand.addPairwiseBilateral(sxy=10, srgb=20, rgbim=image, compat=50)
    want = np.array(by_hand.inference(5), dtype=np.float32).reshape(3, H, W)
    np.testing.assert_array_equal(crf.crf_probabilities(image, scores), want)


def test_unary_is_minus_log_softmax_as_the_authors():
    # One pixel, scores (0, 1, 0.5): softmax = exp(s) / (1 + e + e^0.5); unary = log(1 + e + e^0.5) - s.
    scores = np.array([0.0, 1.0, 0.5], np.float32).reshape(3, 1, 1)
    z = math.log(1 + math.e + math.exp(0.5))
    np.testing.assert_allclose(softmax_unary(scores)[:, 0], [z, z - 1, z - 0.5], rtol=1e-6)
    # The floor: a label 20 units below the others costs -log(1e-5), not 20.
    far = np.array([20.0, 0.0], np.float32).reshape(2, 1, 1)
    np.testing.assert_allclose(softmax_unary(far)[:, 0], [0.0, -math.log(crf.PROB_FLOOR)], atol=1e-6)


def test_crf_moves_noisy_scores_to_the_image_edge():
    image, scores = two_tissue_image(), noisy_scores()
    truth = np.where(np.arange(W)[None, :] < EDGE, 0, 1) * np.ones((H, 1), int)
    before = scores.argmax(axis=0)
    after = crf_refine(image, scores)
    assert after.shape == (H, W) and after.dtype == np.int64
    acc_before, acc_after = (before == truth).mean(), (after == truth).mean()
    assert acc_before < 0.97  # the noise and the offset boundary make argmax wrong in places
    assert acc_after > 0.99 and acc_after > acc_before + 0.02
    # The boundary moved from the scores' 104 to the image's 112, and the salt-and-pepper noise is gone.
    assert abs(np.median((after == 0).sum(axis=1)) - EDGE) <= 2
    assert (before[:, EDGE:] == 0).any() and (before[:, :EDGE] == 1).any()
    assert not (after[:, EDGE + 3:] == 0).any() and not (after[:, :EDGE - 3] == 1).any()


def test_channels_zero_everywhere_never_appear():
    image = two_tissue_image()
    scores = noisy_scores()
    labels = crf_refine(image, scores)
    assert set(np.unique(labels)) <= {0, 1, 3}
    only_bg = np.zeros_like(scores)
    only_bg[3] = 1.0
    assert (crf_refine(image, only_bg) == 3).all()


def test_flat_image_and_scores_are_stable():
    image = np.full((H, W, 3), 200, np.uint8)
    scores = np.zeros((3, H, W), np.float32)
    scores[1] = 0.8
    scores[2] = 0.3
    assert (crf_refine(image, scores) == 1).all()
