"""A student run's model: config.json "student" says how to rebuild the network (construct.runs), the
weights are safetensors."""

from __future__ import annotations

import json
from pathlib import Path

from construct.data.classes import ClassSet
from construct.errors import ConstructError
from construct.runs import STUDENT_KIND, read_kind, read_weights, save_weights, weights_path
from construct.student.model import Student


def save_student(student: Student, path: Path, spec: dict) -> None:
    save_weights(student, path, {"student": json.dumps(spec)})


def student_run_meta(run: Path, command: str = "refine with a student") -> tuple[dict, ClassSet, int]:
    """A student run's config, classes and tile size."""
    meta = read_kind(run, STUDENT_KIND, command)
    try:
        return meta, ClassSet.from_dict(meta["classes"]), int(meta["tile_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConstructError(f"{run}: student run config lacks {e}; distill again with this version") from e


def load_student(run: Path, which: str = "best") -> tuple[Student, dict]:
    """The student of a run (best, falling back to last when no validation chose one) and its config."""
    meta, classes, _ = student_run_meta(run)
    path = weights_path(run, STUDENT_KIND, which)
    spec = meta["student"]
    student = Student(spec["arch"], spec["encoder"], len(classes) + 1)
    try:
        student.load_state_dict(read_weights(path, STUDENT_KIND))
    except RuntimeError as e:
        raise ConstructError(f"{path}: weights do not match the run's student ({spec['arch']}, "
                             f"{spec['encoder']})") from e
    return student.eval(), meta
