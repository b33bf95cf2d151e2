"""Dataset listing and reading: layouts, label brackets, and one-line errors naming the bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from construct.data.classes import BCSS
from construct.data.dataset import (
    IMAGE_SIZE,
    labels_from_mask,
    list_split,
    parse_labels,
    read_image,
    read_mask,
    split_dir,
    write_mask,
)
from construct.errors import ConstructError


def save_png(path: Path, mode: str = "RGB", size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0], channels) if channels else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode).save(path)
    return path


def make_eval_split(root: Path, folder: str, names: list[str]) -> None:
    for name in names:
        save_png(root / folder / "img" / name)
        write_mask(root / folder / "mask" / name, np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8), BCSS)


# --- parse_labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a+0[1101]", [1, 1, 0, 1]),
        ("TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png", [1, 1, 0, 1]),
        ("x[1 0 1 0]", [1, 0, 1, 0]),  # LUAD-HistoSeg
        ("1031280-2300-27920-[0 0 1 1].png", [0, 0, 1, 1]),
    ],
)
def test_parse_labels(name: str, expected: list[int]) -> None:
    labels = parse_labels(name, 4)
    assert labels.dtype == np.uint8
    assert labels.tolist() == expected


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("tile_0001.png", "no label bracket"),
        ("a+0[110]", "has 3 labels, expected 4"),
        ("a+0[11011]", "has 5 labels, expected 4"),
        ("a+0[1201]", "only 0s and 1s"),
        ("a[1101]_more.png", "no label bracket"),  # the bracket must end the stem
    ],
)
def test_parse_labels_errors(name: str, fragment: str) -> None:
    with pytest.raises(ConstructError, match=fragment) as info:
        parse_labels(name, 4)
    assert str(info.value).startswith(name)


# --- list_split -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", [None, "img"])
def test_list_train_flat_or_img(tmp_path: Path, sub: str | None) -> None:
    folder = tmp_path / "train" / sub if sub else tmp_path / "train"
    save_png(folder / "b_MPP-0.2500+0[0110].png")
    save_png(folder / "a+0[1000].png")
    Image.fromarray(np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)).save(folder / "c+0[0001].jpg")
    (folder / "notes.txt").write_text("not an image")

    samples = list_split(tmp_path, "train", BCSS)

    assert split_dir(tmp_path, "train") == folder
    assert [s.image_id for s in samples] == ["a+0[1000]", "b_MPP-0.2500+0[0110]", "c+0[0001]"]
    assert [s.labels.tolist() for s in samples] == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]]
    assert all(s.mask_path is None for s in samples)
    assert read_image(samples[2].image_path).shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_train_file_without_bracket(tmp_path: Path) -> None:
    save_png(tmp_path / "train" / "a+0[1000].png")
    save_png(tmp_path / "train" / "plain.png")
    with pytest.raises(ConstructError, match=r"plain\.png: no label bracket"):
        list_split(tmp_path, "train", BCSS)


@pytest.mark.parametrize("folder", ["valid", "val"])
@pytest.mark.parametrize("split", ["valid", "val"])
def test_list_valid_or_val(tmp_path: Path, folder: str, split: str) -> None:
    make_eval_split(tmp_path, folder, ["t2.png", "t1.png"])
    samples = list_split(str(tmp_path), split, BCSS)
    assert [s.image_id for s in samples] == ["t1", "t2"]
    assert [s.mask_path for s in samples] == [tmp_path / folder / "mask" / n for n in ("t1.png", "t2.png")]
    assert all(s.labels is None for s in samples)


def test_list_test_jpg_with_png_mask(tmp_path: Path) -> None:
    (tmp_path / "test" / "img").mkdir(parents=True)
    Image.fromarray(np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)).save(tmp_path / "test" / "img" / "t.jpg")
    write_mask(tmp_path / "test" / "mask" / "t.png", np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8), BCSS)
    (sample,) = list_split(tmp_path, "test", BCSS)
    assert sample.mask_path == tmp_path / "test" / "mask" / "t.png"


def test_missing_mask_names_the_image(tmp_path: Path) -> None:
    make_eval_split(tmp_path, "test", ["t1.png"])
    save_png(tmp_path / "test" / "img" / "orphan.png")
    with pytest.raises(ConstructError, match="orphan.png: no mask") as info:
        list_split(tmp_path, "test", BCSS)
    assert str(info.value).startswith(str(tmp_path / "test" / "img" / "orphan.png"))


def test_missing_mask_folder(tmp_path: Path) -> None:
    save_png(tmp_path / "test" / "img" / "t1.png")
    with pytest.raises(ConstructError, match="mask folder missing"):
        list_split(tmp_path, "test", BCSS)


def test_eval_split_without_img_folder(tmp_path: Path) -> None:
    save_png(tmp_path / "valid" / "t1.png")
    with pytest.raises(ConstructError, match="no img/ folder"):
        list_split(tmp_path, "valid", BCSS)


def test_empty_split_folder(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "readme.txt").write_text("x")
    with pytest.raises(ConstructError, match="no images") as info:
        list_split(tmp_path, "train", BCSS)
    assert str(info.value).startswith(str(tmp_path / "train"))


@pytest.mark.parametrize("split, fragment", [("test", "no test split folder"), ("valid", "valid/ or val/"), ("dev", "unknown split")])
def test_missing_or_unknown_split(tmp_path: Path, split: str, fragment: str) -> None:
    with pytest.raises(ConstructError, match=fragment):
        list_split(tmp_path, split, BCSS)


# --- read_image -------------------------------------------------------------------------------------


def test_read_image_ok(tmp_path: Path) -> None:
    path = save_png(tmp_path / "ok.png")
    image = read_image(path)
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
    assert np.array_equal(image, np.asarray(Image.open(path)))
    image[0, 0] = 0  # the array is the caller's to modify


def test_read_image_truncated(tmp_path: Path) -> None:
    path = save_png(tmp_path / "cut.png")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConstructError, match="unreadable or truncated") as info:
        read_image(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_read_image_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_text("this is not a PNG")
    with pytest.raises(ConstructError, match="unreadable") as info:
        read_image(path)
    assert str(info.value).startswith(str(path))


def test_read_image_missing(tmp_path: Path) -> None:
    with pytest.raises(ConstructError, match="not found"):
        read_image(tmp_path / "gone.png")


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_read_image_wrong_mode(tmp_path: Path, mode: str) -> None:
    path = save_png(tmp_path / f"{mode}.png", mode=mode)
    with pytest.raises(ConstructError, match=f"mode must be RGB, found {mode}") as info:
        read_image(path)
    assert str(info.value).startswith(str(path))


def test_read_image_wrong_size(tmp_path: Path) -> None:
    path = save_png(tmp_path / "big.png", size=(300, 200))
    with pytest.raises(ConstructError, match="expected 224x224 pixels, found 300x200") as info:
        read_image(path)
    assert str(info.value).startswith(str(path))
    assert read_image(path, size=None).shape == (200, 300, 3)


# --- masks ------------------------------------------------------------------------------------------


def test_write_read_mask_round_trip(tmp_path: Path) -> None:
    mask = (np.arange(IMAGE_SIZE * IMAGE_SIZE).reshape(IMAGE_SIZE, IMAGE_SIZE) % 5).astype(np.uint8)
    path = tmp_path / "masks" / "m.png"
    write_mask(path, mask, BCSS)

    assert np.array_equal(read_mask(path, BCSS, shape=(IMAGE_SIZE, IMAGE_SIZE)), mask)
    assert [p.name for p in path.parent.iterdir()] == ["m.png"]  # no temporary file left behind
    with Image.open(path) as im:
        assert im.mode == "P"
        rgb = np.asarray(im.convert("RGB"))
    for c in BCSS.classes:
        assert tuple(rgb[mask == c.mask_index][0]) == c.color
    assert tuple(rgb[mask == BCSS.background_index][0]) == BCSS.background_color


def test_read_mask_grayscale(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((4, 6), 3, np.uint8)).save(path)
    assert read_mask(path, BCSS).tolist() == [[3] * 6] * 4


def test_read_mask_bad_values(tmp_path: Path) -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[0, 0], mask[1, 1] = 7, 200
    path = tmp_path / "bad.png"
    Image.fromarray(mask).save(path)
    with pytest.raises(ConstructError, match="mask values must be 0..4, found 7, 200") as info:
        read_mask(path, BCSS)
    assert str(info.value).startswith(str(path))


def test_read_mask_shape_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    write_mask(path, np.zeros((20, 30), np.uint8), BCSS)
    with pytest.raises(ConstructError, match="mask is 20x30 but the image is 224x224"):
        read_mask(path, BCSS, shape=(IMAGE_SIZE, IMAGE_SIZE))
    rgb = save_png(tmp_path / "rgb_mask.png")
    with pytest.raises(ConstructError, match="found RGB"):
        read_mask(rgb, BCSS)


def test_write_mask_rejects_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_mask(tmp_path / "m.png", np.full((4, 4), 5, np.uint8), BCSS)
    with pytest.raises(ValueError):
        write_mask(tmp_path / "m.png", np.zeros((4, 4, 3), np.uint8), BCSS)
    assert not list(tmp_path.iterdir())


def test_labels_from_mask() -> None:
    mask = np.array([[0, 4], [2, 2]], np.uint8)
    assert labels_from_mask(mask, BCSS).tolist() == [1, 0, 1, 0]
    assert labels_from_mask(np.full((3, 3), 4, np.uint8), BCSS).tolist() == [0, 0, 0, 0]
