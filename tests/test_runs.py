"""The run folder (construct.runs): weights best/last, kinds, checkpoints, metrics, fingerprints."""

from __future__ import annotations

import json

import pytest
import torch

from construct.backbones.weights import fingerprint, module_fingerprint
from construct.errors import ConstructError
from construct.runs import (
    METRICS,
    RUN_CONFIG,
    STUDENT_KIND,
    WEIGHT_FILES,
    head_run_meta,
    load_checkpoint,
    read_kind,
    read_metrics,
    read_run_config,
    save_checkpoint,
    save_weights,
    weights_path,
    write_metrics,
    write_run_config,
)


def test_best_weights_fall_back_to_last(tmp_path):
    with pytest.raises(ConstructError, match="has no student weights yet"):
        weights_path(tmp_path, STUDENT_KIND, "best")
    net = torch.nn.Linear(2, 2)
    save_weights(net, tmp_path / WEIGHT_FILES[STUDENT_KIND]["last"], {})
    assert weights_path(tmp_path, STUDENT_KIND, "best").name == "student_last.safetensors"
    save_weights(net, tmp_path / WEIGHT_FILES[STUDENT_KIND]["best"], {})
    assert weights_path(tmp_path, STUDENT_KIND, "best").name == "student_best.safetensors"
    assert WEIGHT_FILES["head"] == {"best": "head_best.safetensors", "last": "head_last.safetensors"}


def test_config_round_trip_and_kind_refusals(tmp_path):
    with pytest.raises(ConstructError, match="not a construct run"):
        read_run_config(tmp_path)
    write_run_config(tmp_path, {"kind": "student", "x": 1})
    assert read_run_config(tmp_path)["x"] == 1
    with pytest.raises(ConstructError, match=r"is a student run \(made by `construct distill`\); `refine` needs a head"):
        head_run_meta(tmp_path)
    assert read_kind(tmp_path, STUDENT_KIND, "x")["kind"] == "student"
    (tmp_path / RUN_CONFIG).write_text(json.dumps({"format": "construct-run", "format_version": 99}))
    with pytest.raises(ConstructError, match="run format version 99"):
        read_run_config(tmp_path)


def test_checkpoint_loads_back_without_pickled_code(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "state": {"epoch": 2, "best": None, "history": [{"loss": 0.5}]}}
    save_checkpoint(tmp_path / "ck.pt", state)
    back = load_checkpoint(tmp_path / "ck.pt")
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["state"] == state["state"]
    torch.save({"obj": ConstructError("x")}, tmp_path / "bad.pt")  # an arbitrary object: refused
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(tmp_path / "bad.pt")


def test_metrics_are_rewritten_whole(tmp_path):
    write_metrics(tmp_path, [{"step": 1}, {"step": 2}])
    write_metrics(tmp_path, [{"step": 1}])
    assert (tmp_path / METRICS).read_text() == '{"step": 1}\n'
    assert read_metrics(tmp_path) == [{"step": 1}]


def test_module_fingerprint_names_the_weights():
    net = torch.nn.BatchNorm1d(3)
    before = module_fingerprint(net)
    assert before == fingerprint(iter(net.state_dict().items()))
    net.running_mean += 1  # a buffer counts as much as a parameter
    assert module_fingerprint(net) != before
