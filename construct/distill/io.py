"""A student run folder: config.json (kind "student", how to rebuild the network) and safetensors weights."""

from __future__ import annotations

import json
from pathlib import Path

from construct import __version__
from construct.atomic import atomic_output
from construct.data.classes import ClassSet
from construct.distill.student import Student
from construct.errors import ConstructError
from construct.head.io import read_run_config
from construct.inference.runs import STUDENT_KIND, require_kind

STUDENT_FILES = {"best": "student_best.safetensors", "last": "student_last.safetensors"}


def save_student(student: Student, path: Path, spec: dict) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata={"student": json.dumps(spec), "package_version": __version__})


def student_run_meta(run: Path) -> tuple[dict, ClassSet, int]:
    """A student run's config, classes and tile size."""
    meta = read_run_config(run)
    require_kind(run, meta, STUDENT_KIND, "refine with a student")
    try:
        return meta, ClassSet.from_dict(meta["classes"]), int(meta["tile_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConstructError(f"{run}: student run config lacks {e}; distill again with this version") from e


def load_student(run: Path, which: str = "best") -> tuple[Student, dict]:
    """The student of a run (best, falling back to last when no validation chose one) and its config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run = Path(run)
    meta, classes, _ = student_run_meta(run)
    path = run / STUDENT_FILES[which]
    if not path.is_file() and which == "best":
        path = run / STUDENT_FILES["last"]
    if not path.is_file():
        raise ConstructError(f"{run}: has no student weights yet ({STUDENT_FILES['last']} missing)")
    spec = meta["student"]
    student = Student(spec["arch"], spec["encoder"], len(classes) + 1)
    try:
        student.load_state_dict(load_file(str(path)))
    except (SafetensorError, OSError) as e:
        raise ConstructError(f"{path}: unreadable student weights ({e})") from e
    except RuntimeError as e:
        raise ConstructError(f"{path}: weights do not match the run's student ({spec['arch']}, "
                             f"{spec['encoder']})") from e
    return student.eval(), meta
