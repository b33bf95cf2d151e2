"""A run folder's head: weights in safetensors, described by the run's config.json."""

from __future__ import annotations

import json
from pathlib import Path

from construct import __version__
from construct.atomic import atomic_output, write_text_atomic
from construct.errors import ConstructError
from construct.head.model import ConStructHead, HeadConfig

RUN_FORMAT = "construct-run"
RUN_FORMAT_VERSION = 1
RUN_CONFIG = "config.json"
METRICS = "metrics.jsonl"  # one JSON record per line: what train and distill logged (best/last read it)
HEAD_FILES = {"best": "head_best.safetensors", "last": "head_last.safetensors"}


def save_head(head: ConStructHead, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata={"head_config": json.dumps(head.config.to_dict()),
                                             "package_version": __version__})


def write_run_config(run: Path, config: dict) -> None:
    write_text_atomic(run / RUN_CONFIG, json.dumps(
        {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "package_version": __version__, **config},
        indent=2) + "\n")


def read_run_config(run: Path) -> dict:
    path = Path(run) / RUN_CONFIG
    if not path.is_file():
        raise ConstructError(f"{run}: not a construct run (no {RUN_CONFIG}; train one with `construct train`)")
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise ConstructError(f"{path}: unreadable run config ({e})") from e
    if meta.get("format") != RUN_FORMAT:
        raise ConstructError(f"{path}: not a construct run config")
    if meta.get("format_version") != RUN_FORMAT_VERSION:
        raise ConstructError(
            f"{path}: run format version {meta.get('format_version')}, this construct reads "
            f"version {RUN_FORMAT_VERSION}; retrain with this version"
        )
    return meta


def load_head(run: Path | str, which: str = "best") -> tuple[ConStructHead, dict]:
    """The head of a run (best, falling back to last when no validation chose one) and its config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run = Path(run)
    meta = read_run_config(run)
    path = run / HEAD_FILES[which]
    if not path.is_file() and which == "best":
        path = run / HEAD_FILES["last"]
    if not path.is_file():
        raise ConstructError(f"{run}: has no head weights yet ({HEAD_FILES['last']} missing)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ConstructError(f"{path}: unreadable head weights ({e})") from e
    head = ConStructHead(HeadConfig.from_dict(meta["head"]))
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ConstructError(f"{path}: weights do not match the run's head config") from e
    return head.eval(), meta
