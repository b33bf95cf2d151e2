"""Helpers for the train tests: editing copies of stores into bad inputs, reading run folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


def edit_store_attrs(store: Path, edit) -> None:
    """Apply `edit(attributes)` to a store's zarr.json attributes in place."""
    meta_path = Path(store) / "zarr.json"
    meta = json.loads(meta_path.read_text())
    edit(meta["attributes"])
    meta_path.write_text(json.dumps(meta))


def head_weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(run) / f"head_{which}.safetensors"))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
