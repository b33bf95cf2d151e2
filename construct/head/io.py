"""A head run's model: the head's safetensors weights, rebuilt from the run's config.json (construct.runs)."""

from __future__ import annotations

import json
from pathlib import Path

from construct.errors import ConstructError
from construct.head.model import ConStructHead, HeadConfig
from construct.runs import HEAD_KIND, read_kind, read_weights, save_weights, weights_path


def save_head(head: ConStructHead, path: Path) -> None:
    save_weights(head, path, {"head_config": json.dumps(head.config.to_dict())})


def load_head(run: Path | str, which: str = "best", command: str = "refine") -> tuple[ConStructHead, dict]:
    """The head of a run (best, falling back to last when no validation chose one) and its config."""
    meta = read_kind(run, HEAD_KIND, command)
    path = weights_path(run, HEAD_KIND, which)
    state = read_weights(path, HEAD_KIND)
    head = ConStructHead(HeadConfig.from_dict(meta["head"]))
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ConstructError(f"{path}: weights do not match the run's head config") from e
    return head.eval(), meta
