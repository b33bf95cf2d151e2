"""Bad input through `construct extract`: one `Error: ...` line naming the file, no traceback, no store left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from construct.cli import main
from construct.data.classes import BCSS
from construct.data.dataset import write_mask

from .helpers import files_snapshot

NAMES = ["a+0[1000].png", "b+0[0100].png", "c+0[0010].png", "d+0[0001].png"]


@pytest.fixture(autouse=True)
def reuse_tiny_backbones(monkeypatch, tiny_backbones):
    """The command builds its backbones from the specs; hand it the session's random-tiny ones (identical
    weights, see tests/backbones) instead of rebuilding them for every invocation."""
    from construct.extract import extractor

    real = extractor.create_backbone
    cached = {("conch", "random-tiny", 224): tiny_backbones[0], ("segformer", "random-tiny", 224): tiny_backbones[1]}

    def create_backbone(family, spec=None, image_size=224):
        return cached.get((family, spec, image_size)) or real(family, spec, image_size)

    monkeypatch.setattr(extractor, "create_backbone", create_backbone)


def rgb(path: Path, size: int = 224, mode: str = "RGB", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, len(mode)), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if mode == "L" else arr, mode=mode).save(path)
    return path


def train_set(root: Path) -> list[Path]:
    return [rgb(root / "train" / n, seed=i) for i, n in enumerate(NAMES)]


def valid_set(root: Path, n: int = 3) -> list[Path]:
    imgs = []
    for i in range(n):
        imgs.append(rgb(root / "valid" / "img" / f"v{i}.png", seed=i))
        write_mask(root / "valid" / "mask" / f"v{i}.png", np.full((224, 224), i % 5, np.uint8), BCSS)
    return imgs


def run_extract(data: Path, out: Path, split: str = "train", workers: int = 0):
    args = ["extract", "--data", str(data), "--split", split, "--out", str(out), "--conch", "random-tiny",
            "--segformer", "random-tiny", "--batch-size", "2", "--workers", str(workers), "--quiet"]
    return CliRunner().invoke(main, args)


def assert_one_error_line(result, *expected: str) -> str:
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    out = result.output  # what the user sees: stdout and stderr together
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out
    for e in expected:
        assert e in errors[0], (e, errors[0])
    return errors[0]


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])


def _not_an_image(p: Path) -> None:
    p.write_text("this is not a png\n")


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("damage, says", [(_truncate, "truncated"), (_not_an_image, "unreadable")])
def test_unreadable_or_truncated_tile(tmp_path, damage, says, workers):
    data, out = tmp_path / "data", tmp_path / "out.zarr"
    bad = train_set(data)[2]  # the second batch: the first one has been computed already
    damage(bad)
    line = assert_one_error_line(run_extract(data, out, workers=workers), str(bad), says)
    assert "re-run to resume" not in line  # nothing was kept, so nothing to resume
    assert not out.exists() and not Path(str(out) + ".creating").exists()


@pytest.mark.parametrize("size, mode, found", [(200, "RGB", "found 200x200"), (224, "RGBA", "found RGBA"),
                                               (224, "L", "found L")])
def test_tile_of_the_wrong_size_or_mode(tmp_path, size, mode, found):
    data, out = tmp_path / "data", tmp_path / "out.zarr"
    bad = train_set(data)[1]
    rgb(bad, size=size, mode=mode)
    assert_one_error_line(run_extract(data, out), str(bad), found)
    assert not out.exists()


def test_train_file_without_label_bracket(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out.zarr"
    train_set(data)
    bad = rgb(data / "train" / "e.png")
    assert_one_error_line(run_extract(data, out), bad.name, "no label bracket")
    assert not out.exists()


def test_empty_split_folder(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out.zarr"
    (data / "train").mkdir(parents=True)
    assert_one_error_line(run_extract(data, out), str(data / "train"), "no images")
    assert not out.exists()


def test_missing_split_folder(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out.zarr"
    train_set(data)
    assert_one_error_line(run_extract(data, out, split="valid"), str(data), "no valid split folder")
    assert not out.exists()


def test_missing_mask(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out.zarr"
    imgs = valid_set(data)
    (data / "valid" / "mask" / imgs[1].name).unlink()
    assert_one_error_line(run_extract(data, out, split="valid"), str(imgs[1]), "no mask")
    assert not out.exists()


def test_mask_values_outside_the_classes(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out.zarr"
    imgs = valid_set(data)
    mask = data / "valid" / "mask" / imgs[2].name
    values = np.zeros((224, 224), np.uint8)
    values[:10] = 9
    Image.fromarray(values, mode="L").save(mask)
    assert_one_error_line(run_extract(data, out, split="valid"), str(mask), "found 9")
    assert not out.exists()


def test_mask_of_another_size(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out.zarr"
    imgs = valid_set(data)
    mask = data / "valid" / "mask" / imgs[0].name
    write_mask(mask, np.zeros((100, 224), np.uint8), BCSS)
    assert_one_error_line(run_extract(data, out, split="valid"), str(mask), "100x224")
    assert not out.exists()


def test_out_is_a_file(tmp_path):
    data, out = tmp_path / "data", tmp_path / "features.zarr"
    train_set(data)
    out.write_text("my notes")
    assert_one_error_line(run_extract(data, out), str(out), "not a construct feature store")
    assert out.read_text() == "my notes"


def test_out_is_a_folder_of_something_else(tmp_path):
    data, out = tmp_path / "data", tmp_path / "results"
    train_set(data)
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "keep.txt").write_text("x")
    before = files_snapshot(out)
    assert_one_error_line(run_extract(data, out), str(out), "not a construct feature store")
    assert files_snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["sub"]


def test_good_input_succeeds_and_warns_about_random_weights(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out.zarr"
    train_set(data)
    result = run_extract(data, out, workers=1)
    assert result.exit_code == 0, result.output
    assert "4 rows; extracted 4 now" in result.output
    assert "WARNING: random backbone weights" in result.stderr


@pytest.mark.parametrize("flags, says", [
    (["--seg-stages", "3,3"], "--seg-stages 3,3: expected distinct numbers"),
    (["--seg-stages", "5"], "requested taps not produced by the backbones: seg_s5"),
    (["--seg-stages", "x"], "--seg-stages x"),
    (["--workers", "-1"], "--workers -1"),
    (["--batch-size", "0"], "--batch-size"),
    (["--limit", "0"], "--limit"),
])
def test_bad_flags(tmp_path, flags, says):
    data, out = tmp_path / "data", tmp_path / "out.zarr"
    train_set(data)
    args = ["extract", "--data", str(data), "--out", str(out), "--conch", "random-tiny", "--segformer", "random-tiny",
            "--quiet", *flags]
    assert_one_error_line(CliRunner().invoke(main, args), says)
    assert not out.exists()
