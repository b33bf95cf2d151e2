"""`construct ablate`: the variants from one store, one seed and schedule; resumable; the table."""

from __future__ import annotations

import json

from click.testing import CliRunner

from construct.cli import main
from construct.store import FeatureStore

FAST = ["--preset", "demo", "--steps", "6", "--workers", "0", "--device", "cpu", "--quiet"]


def ablate(stores, out, *extra):
    args = ["ablate", "--features", str(stores["train"]), "--val-features", str(stores["valid"]), "--out", str(out),
            *FAST, *extra]
    return CliRunner().invoke(main, args)


def test_variants_are_ordinary_runs_with_one_schedule(stores, tmp_path):
    res = ablate(stores, tmp_path / "abl", "--variants", "full,bce-only,no-text-init")
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert list(results) == ["full", "bce-only", "no-text-init"]
    settings = {}
    for name in results:
        run = tmp_path / "abl" / name
        assert (run / "head_best.safetensors").is_file() and (run / "config.json").is_file()
        settings[name] = json.loads((run / "config.json").read_text())["train"]
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert results[name]["mIoU"] == max(r["val_mIoU"] for r in records)  # the best head's validation
        assert records[-1]["step"] == 6
    assert (settings["bce-only"]["distill"], settings["bce-only"]["contrast"]) == (False, False)
    assert settings["no-text-init"]["text_init"] is False and settings["full"]["text_init"] is True
    same = {k: v for k, v in settings["full"].items() if k not in ("out", "distill", "contrast", "text_init")}
    assert all({k: s[k] for k in same} == same for s in settings.values())  # seed, steps, lr, ... shared
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| paper: full | 70.96 | 82.83 |" in table and "| paper: no-distill | 70.40 |" in table
    assert "bce-only" in table and "bce-only" in res.output and "IoU TUM" in res.output
    # a rerun skips what is finished, and adds what was not asked before
    again = ablate(stores, tmp_path / "abl", "--variants", "full,no-distill")
    assert again.exit_code == 0, again.output
    assert "full: done before" in again.output and "no-distill: training" in again.output
    assert list(json.loads((tmp_path / "abl" / "ablation.json").read_text())) == ["full", "no-distill"]


def test_scored_on_a_split_with_data(stores, tmp_path):
    data = FeatureStore.open(stores["valid"]).meta["data_root"]
    res = ablate(stores, tmp_path / "abl", "--variants", "bce-only", "--data", data, "--split", "valid",
                 "--crf-workers", "0")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "abl" / "ablation.json").read_text())["bce-only"]
    assert set(metrics["IoU"]) == {"TUM", "STR", "LYM", "NEC"} and "pixel_accuracy" in metrics  # eval's keys
    assert metrics == json.loads((tmp_path / "abl" / "bce-only" / "eval.json").read_text())
    pred = tmp_path / "abl" / "bce-only" / "predictions" / "valid"
    assert len(list(pred.glob("*.png"))) == 12
    # eval's report shows the ablation table when given the folder; a folder without one is one line
    report = tmp_path / "report.html"
    args = ["eval", "--pred", str(pred), "--data", data, "--split", "valid", "--report", str(report), "--quiet"]
    res = CliRunner().invoke(main, [*args, "--ablation", str(tmp_path / "abl")])
    assert res.exit_code == 0, res.output
    page = report.read_text()
    assert "<h2>Ablation</h2>" in page and "paper: no-distill" in page and "<td>bce-only</td>" in page
    res = CliRunner().invoke(main, [*args, "--ablation", str(tmp_path)])
    assert res.exit_code != 0 and res.output.count("Error:") == 1 and "no ablation.json" in res.output


def test_bad_input_is_one_line(stores, tmp_path):
    res = ablate(stores, tmp_path / "abl", "--variants", "full,no-crf")
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert res.output.count("Error:") == 1 and "unknown no-crf" in res.output and "bce-only" in res.output
    assert not (tmp_path / "abl").exists()
    assert ablate(stores, tmp_path / "abl", "--variants", "bce-only").exit_code == 0
    (tmp_path / "abl" / "bce-only" / "variant.json").unlink()  # as if killed after training
    res = ablate(stores, tmp_path / "abl", "--variants", "bce-only", "--lr", "0.5")
    assert res.exit_code != 0 and res.output.count("Error:") == 1 and "lr differ" in res.output
