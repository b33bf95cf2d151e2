"""The stain package on hand-built images: known stain matrices, identity, shifts, degenerate inputs."""

from __future__ import annotations

import logging

import pytest
import torch

from construct.errors import ConstructError
from construct.stain.augment import hed_jitter, hed_recolour
from construct.stain.colour import as_rows, from_od, lab_to_rgb, rgb_to_lab, to_od
from construct.stain.estimate import estimate_images, tissue_mask, tissue_pixels
from construct.stain.normalize import StainNormalizer, fit_normalizer
from construct.stain.predictor import StainNormalizedPredictor, with_stain_norm
from construct.stain.reference import DegenerateStain, StainReference

H = torch.tensor([0.65, 0.70, 0.29])
E = torch.tensor([0.17, 0.89, 0.41])  # as estimated on real H&E: pure eosin passes the tissue test


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def compose(h: torch.Tensor, e: torch.Tensor, seed: int = 0, size: int = 64, n: int = 4,
            h_scale: float = 1.0, e_scale: float = 1.0) -> torch.Tensor:
    """(n, 3, size, size) images from stains h, e: a third pure hematoxylin, a third pure eosin, a third
    mixed, and a glass border; concentrations 0.8 to 1.6 (x the scales)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 2, size, size, generator=g) * 0.8 + 0.8
    kind = torch.randint(0, 3, (n, 1, size, size), generator=g)
    c[:, 1:2][kind == 0] = 0.0  # pure H
    c[:, 0:1][kind == 1] = 0.0  # pure E
    c[..., :4, :] = 0.0  # glass
    c = c * torch.tensor([h_scale, e_scale])[None, :, None, None]
    m = torch.stack([unit(h), unit(e)], dim=1)
    return from_od(torch.einsum("ks,bshw->bkhw", m, c))


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.rad2deg(torch.arccos((unit(a) @ unit(b)).clamp(-1, 1))))


def test_estimate_recovers_the_stain_matrix_it_was_composed_from():
    ref = estimate_images([compose(H, E)])
    m = ref.matrix()
    assert angle(m[:, 0], H) < 1.0 and angle(m[:, 1], E) < 1.0
    # Concentrations were drawn up to 1.6: the 99th percentile sits just below.
    assert all(1.5 < c < 1.6 for c in ref.max_concentrations)


def test_tissue_pixels_exclude_glass_and_black():
    images = torch.ones(1, 3, 4, 4)
    images[0, :, 0, 0] = torch.tensor([0.5, 0.3, 0.6])  # tissue
    images[0, :, 0, 1] = 0.02  # near black
    assert tissue_pixels([images]).tolist() == [pytest.approx([0.5, 0.3, 0.6])]


def test_normalising_the_reference_to_itself_is_identity():
    # Plus density outside the two stains' plane (pigment, a third stain): kept, not projected away.
    third = torch.tensor([0.27, 0.57, 0.78])[None, :, None, None]
    images = from_od(to_od(compose(H, E)) + 0.1 * torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(3)) * third)
    ref = estimate_images([images])
    for method in ("macenko", "reinhard"):
        out = StainNormalizer(method, ref, ref)(images)
        assert (out - images).abs().max() < 1e-3, method


def test_macenko_undoes_a_stain_shift():
    original = compose(H, E)
    shifted = compose(H + torch.tensor([0.05, -0.1, 0.1]), E + torch.tensor([0.1, 0.0, -0.15]),
                      h_scale=1.35, e_scale=0.7)
    ref = estimate_images([original])
    normaliser, record = fit_normalizer("macenko", ref, [shifted], "shifted")
    assert record["applied"] == "macenko" and record["distance"]["h_scale"] > 1.2
    before = (shifted - original).abs().mean()
    after = (normaliser(shifted) - original).abs().mean()
    assert after < before / 5 and after < 0.01


def test_reinhard_matches_the_reference_lab_statistics():
    original, shifted = compose(H, E), compose(H, E, h_scale=1.3, e_scale=0.75)
    ref = estimate_images([original])
    normaliser, _ = fit_normalizer("reinhard", ref, [shifted], "shifted")
    tissue = tissue_mask(as_rows(shifted))  # the pixels the statistics were matched on
    lab = rgb_to_lab(as_rows(normaliser(shifted))[tissue])
    assert lab.mean(0).tolist() == pytest.approx(ref.lab_mean, abs=0.01)
    assert lab.std(0).tolist() == pytest.approx(ref.lab_std, abs=0.01)


@pytest.mark.parametrize("images, why", [
    (torch.full((2, 3, 32, 32), 0.95), "too little tissue"),  # glass
    (compose(H, H * 1.01), "one stain"),
    (compose(torch.tensor([0.05, 0.3, 0.9]), torch.tensor([0.9, 0.1, 0.4])), "from H&E"),  # ink
])
def test_degenerate_inputs_fall_back_to_no_normalisation_with_a_warning(images, why, caplog):
    ref = estimate_images([compose(H, E)])
    with pytest.raises(DegenerateStain, match=why):
        estimate_images([images])
    with caplog.at_level(logging.WARNING, logger="construct.stain"):
        normaliser, record = fit_normalizer("macenko", ref, [images], "odd tiles")
    assert normaliser is None and record["applied"] == "none" and why in record["warning"]
    assert "odd tiles" in caplog.text


def test_no_reference_or_none_method_does_not_normalise():
    images = compose(H, E)
    assert fit_normalizer("macenko", None, [images], "x")[1]["warning"].endswith("not normalised")
    normaliser, record = fit_normalizer("none", estimate_images([images]), [images], "x")
    assert normaliser is None and record["input"] is None and record["warning"] is None


def test_reference_round_trips_through_json(tmp_path):
    ref = estimate_images([compose(H, E)], "train")
    ref.save(tmp_path / "ref.json")
    assert StainReference.load(tmp_path / "ref.json") == ref
    assert ref.distance(ref) == {"delta_e": 0.0, "h_angle_deg": 0.0, "e_angle_deg": 0.0, "h_scale": 1.0,
                                 "e_scale": 1.0}
    with pytest.raises(ConstructError, match="malformed"):
        StainReference.from_dict({"stain_matrix": [[1, 2]]})


def test_lab_of_white_and_round_trip():
    rows = torch.rand(100, 3)
    assert rgb_to_lab(torch.ones(1, 3)).tolist()[0] == pytest.approx([100.0, 0.0, 0.0], abs=1e-2)
    assert (lab_to_rgb(rgb_to_lab(rows)) - rows).abs().max() < 1e-4


def test_hed_jitter_is_seeded_and_off_at_zero():
    images = compose(H, E)
    assert hed_jitter(images, 0.0, torch.Generator()) is images
    a = hed_jitter(images, 0.1, torch.Generator().manual_seed(1))
    b = hed_jitter(images, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and (a - images).abs().mean() > 1e-3
    identity = hed_recolour(images, torch.ones(len(images), 3), torch.zeros(len(images), 3))
    assert (identity - images).abs().max() < 1e-4


def test_predictor_sees_normalised_images():
    class Recorder:
        classes, tile_size, fingerprint, device = None, 64, "fp", torch.device("cpu")

        def scores(self, images01, gate, labels=None, pred_threshold=0.5):
            self.seen = images01
            return images01, torch.ones(1)

    images = compose(H, E, h_scale=1.3)
    normaliser = StainNormalizer("macenko", estimate_images([images]), estimate_images([compose(H, E)]))
    inner = Recorder()
    wrapped = with_stain_norm(inner, normaliser)
    assert isinstance(wrapped, StainNormalizedPredictor) and wrapped.tile_size == 64
    wrapped.scores(images, "none")
    assert torch.equal(inner.seen, normaliser(images))
    assert with_stain_norm(inner, None) is inner


def test_lab_transfer_moves_tissue_by_the_shift_and_leaves_glass_white():
    from construct.stain.normalize import lab_transfer

    pink = torch.tensor([0.85, 0.45, 0.65])  # one flat tissue colour: no spread for the scale to act on
    image = torch.ones(1, 3, 8, 8)
    image[..., 4:, :] = pink[:, None, None]
    centre = rgb_to_lab(pink[None])
    moved = lab_transfer(image, centre, torch.full((1, 3), 1.7), torch.tensor([[-6.0, 4.0, -2.0]]))
    assert torch.equal(moved[..., :4, :], image[..., :4, :])  # glass untouched
    got = rgb_to_lab(as_rows(moved[..., 4:, :]))
    assert torch.allclose(got, centre + torch.tensor([-6.0, 4.0, -2.0]), atol=0.05)
    same = lab_transfer(image, centre, torch.ones(1, 3), torch.zeros(1, 3))
    assert torch.allclose(same, image, atol=1e-4)


def test_lab_jitter_is_seeded_bounded_and_off_at_zero():
    from construct.stain.augment import LAB_SHIFT_SCALE, lab_jitter, tissue_lab_means

    images = compose(H, E, n=6)
    assert lab_jitter(images, 0.0, torch.Generator()) is images
    a = lab_jitter(images, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(a, lab_jitter(images, 0.1, torch.Generator().manual_seed(3)))
    assert torch.equal(a[..., :4, :], images[..., :4, :])  # the glass border stays white
    moved = tissue_lab_means(a) - tissue_lab_means(images)
    assert moved.abs().max() <= 0.1 * LAB_SHIFT_SCALE + 1.0  # + what clamping to RGB moves the mean
    assert moved.abs().mean() > 0.5  # and it does move it
    assert (moved[0] - moved[1]).abs().max() > 1.0  # each image its own draw


def test_tissue_lab_means_leave_glass_out_and_fall_back_to_the_whole_image():
    from construct.stain.augment import tissue_lab_means

    pink = torch.tensor([0.8, 0.4, 0.6])
    images = torch.ones(2, 3, 4, 4)  # the second is all glass
    images[0, :, 2:, :] = pink[:, None, None]
    means = tissue_lab_means(images)
    assert torch.allclose(means[0], rgb_to_lab(pink[None])[0], atol=1e-3)
    assert torch.allclose(means[1], torch.tensor([100.0, 0.0, 0.0]), atol=1e-2)
