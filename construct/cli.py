"""The `construct` command line: parses flags and calls the library; every command is a function too."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import click

from construct import __version__
from construct.data import SPLITS
from construct.distill.config import WEIGHTINGS
from construct.errors import ConstructError
from construct.slide.defaults import MIN_AREA_UM2, VECTOR_MPP
from construct.stain.methods import DEFAULT_AUGMENT as DEFAULT_STAIN_AUGMENT
from construct.stain.methods import DEFAULT_LAB_AUGMENT
from construct.stain.methods import DEFAULT_METHOD as DEFAULT_STAIN_NORM
from construct.stain.methods import METHODS as STAIN_METHODS
from construct.store.in_memory import DEFAULT_MEMORY_GB
from construct.student.names import ARCHS, ENCODERS

RANDOM_WARNING = (
    "WARNING: random backbone weights ({specs}): features carry no pretrained knowledge; "
    "numbers from them say nothing about the method."
)


def user_errors(fn: Callable) -> Callable:
    """Turn a ConstructError into one `Error: ...` line and exit status 1, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConstructError as e:
            raise click.ClickException(str(e)) from e
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def precision_option(what: str, auto: str = "") -> Callable:
    """--precision for a command whose `what` runs at it; `auto` says what auto takes before the hardware."""
    return click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
                        help=f"{what}. auto: {auto}bf16 where the device computes it natively (AMX, "
                             f"AVX512-BF16, a bf16 GPU), else fp32.")


def warn_random(recipes) -> None:
    specs = [f"{r.family}={r.spec}" for r in recipes if r.random_weights]
    if specs:
        click.secho(RANDOM_WARNING.format(specs=", ".join(specs)), fg="yellow", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="construct")
def main() -> None:
    """ConStruct: weakly supervised tissue segmentation of H&E tiles.

    \b
    Pipeline:  synth/your data -> extract -> train -> refine -> eval
    Stage 2:   train -> distill (a fast student) -> refine --run STUDENT
    Slides:    slide --run RUN (a head or student run) -> OUT/<slide>/
    Run `construct demo` to see all of it on the embedded synthetic data.

    \b
    Names shared by the commands: --run (spelled --model under torchrun), --tta/--no-tta, --crf/--no-crf,
    --crf-workers (CRF processes), --loader-workers (image or store reading processes). --workers keeps
    its older meaning per command: the one its --help names.
    """


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write the dataset to.")
@click.option("--train", "n_train", type=int, default=200, show_default=True, help="Training tiles.")
@click.option("--valid", "n_valid", type=int, default=40, show_default=True, help="Validation tiles.")
@click.option("--test", "n_test", type=int, default=40, show_default=True, help="Test tiles.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@user_errors
def synth(out: Path, n_train: int, n_valid: int, n_test: int, seed: int) -> None:
    """Write a synthetic H&E-like dataset in the BCSS-WSSS layout (the embedded default data)."""
    from construct.data.synth import SynthConfig, make_synthetic_dataset

    make_synthetic_dataset(out, SynthConfig(n_train=n_train, n_valid=n_valid, n_test=n_test, seed=seed))
    click.echo(f"synthetic dataset: {out} (train {n_train}, valid {n_valid}, test {n_test}, seed {seed})")


@main.command()
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Dataset root (BCSS-WSSS layout).")
@click.option("--split", type=click.Choice(SPLITS), default="train", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Store path [default: features/<split>.zarr].")
@click.option("--conch", default=None, help="CONCH weights: hf:REPO, a pytorch_model.bin, random, random-tiny [default: hf:MahmoodLab/conch].")
@click.option("--segformer", default=None, help="MiT-B1 weights: hf:REPO, a transformers folder, an NVlabs mit_b1.pth, random, random-tiny [default: hf:nvidia/mit-b1].")
@click.option("--classes", default="bcss", show_default=True, help="Class set: bcss, luad or a JSON file.")
@click.option("--image-size", type=click.Choice(["224", "448"]), default="224", show_default=True, help="CONCH input size (448 = 4x cost).")
@click.option("--mpp", type=float, default=0.25, show_default=True, help="µm/px of the tiles (BCSS-WSSS: 0.25); `slide` tiles at it.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@precision_option("The backbones' forward")
@click.option("--store-dtype", type=click.Choice(["float16", "int8"]), default="float16", show_default=True, help="Stored activations.")
@click.option("--seg-stages", default="3", show_default=True, help="SegFormer stages to store, e.g. 3 or 2,3.")
@click.option("--loader-workers", "--workers", "workers", type=int, default=2, show_default=True,
              help="Image decoding processes (--workers: the same, its older name).")
@click.option("--limit", type=int, default=None, help="Only the first N images (quick trials).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def extract(data, split, out, conch, segformer, classes, image_size, mpp, batch_size, device, precision,
            store_dtype, seg_stages, workers, limit, quiet) -> None:
    """Run frozen CONCH + SegFormer once over a split and write their features to a Zarr store.

    Re-running the same command resumes an interrupted extraction.
    """
    from construct.backbones.registry import DEFAULT_SPECS
    from construct.distributed import is_main_process
    from construct.extract.config import ExtractConfig
    from construct.extract.extractor import extract as run_extract

    try:
        stages = tuple(int(s) for s in seg_stages.split(","))
    except ValueError as e:
        raise ConstructError(f"--seg-stages {seg_stages}: expected stage numbers such as 3 or 2,3") from e
    cfg = ExtractConfig(
        data=data, split=split, out=out, conch=conch or DEFAULT_SPECS["conch"],
        segformer=segformer or DEFAULT_SPECS["segformer"], classes=classes, image_size=int(image_size),
        mpp=mpp, batch_size=batch_size, device=device, precision=precision, store_dtype=store_dtype,
        seg_stages=stages, workers=workers, limit=limit,
    )
    result = run_extract(cfg, progress=not quiet)
    if not is_main_process():
        return  # under torchrun, rank 0 reports for every process
    from construct.store import FeatureStore

    warn_random(FeatureStore.open(result.store).recipes.values())
    click.echo(
        f"store: {result.store} ({result.n_rows} rows; extracted {result.n_extracted} now "
        f"in {result.seconds:.1f} s, {result.images_per_s:.1f} img/s)"
    )


@main.command(name="eval")
@click.option("--pred", type=click.Path(path_type=Path), required=True, help="Folder of predicted masks (<stem>.png).")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Dataset root with ground truth.")
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True)
@click.option("--protocol", type=click.Choice(["bcss", "ignore-background"]), default="bcss", show_default=True,
              help="bcss: background pixels count (the paper); ignore-background: MLPS style.")
@click.option("--classes", default="bcss", show_default=True, help="Class set: bcss, luad or a JSON file.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the metrics JSON here.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None, help="Write a self-contained HTML report here.")
@click.option("--features", type=click.Path(path_type=Path), default=None, help="Train feature store, for the report's prototype gallery.")
@click.option("--run", "--model", "run", type=click.Path(path_type=Path), default=None,
              help="Trained run: the gallery shows its learned prototypes instead of the text embeddings.")
@click.option("--allow-missing", is_flag=True, help="Count missing predictions instead of failing.")
@click.option("--baselines", is_flag=True, help="Also score all-background and labelled-everywhere predictions.")
@click.option("--ablation", type=click.Path(path_type=Path), default=None,
              help="Folder from `construct ablate`: the report shows its table.")
@click.option("--student-pred", type=click.Path(path_type=Path), default=None,
              help="Masks of a distilled student (refine --run STUDENT): scored too, a row beside ours.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def eval_cmd(pred, data, split, protocol, classes, json_path, report_path, features, run, allow_missing, baselines,
             ablation, student_pred, quiet) -> None:
    """Score predicted masks with the paper's protocol and print the comparison table."""
    from construct.data.classes import load_classes
    from construct.evaluate.run import evaluate_predictions
    from construct.evaluate.table import format_table

    result = evaluate_predictions(
        pred, data, split, protocol=protocol, classes=load_classes(classes), allow_missing=allow_missing,
        json_path=json_path, report_path=report_path, features=features, progress=not quiet,
        baselines=baselines, run=run, ablation=ablation, student_pred=student_pred,
    )
    click.echo(format_table(result))


# train's settings, shared by `train` and `ablate` (same names, same meaning).
TRAIN_OPTIONS = (
    click.option("--preset", type=click.Choice(["paper", "demo"]), default="paper", show_default=True,
                 help="paper: the paper's settings; demo: a short schedule that carries to small real sets."),
    click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                 help="JSON/TOML file of settings (between preset and flags)."),
    click.option("--steps", type=int, default=None,
                 help="Optimiser steps: warm-up, then poly decay over them [paper: 4684, its 2 epochs of BCSS-WSSS]."),
    click.option("--epochs", type=float, default=None, help="Instead of --steps: passes over the store, converted to steps."),
    click.option("--batch-size", type=int, default=None, help="[paper: 10]"),
    click.option("--lr", type=float, default=None, help="AdamW learning rate, poly decay [paper: 2e-5]."),
    click.option("--warmup", type=float, default=None, help="Fraction of the steps with a linear lr warm-up [paper: 0]."),
    click.option("--loss-weighting", "--weighting", "loss_weighting", type=click.Choice(["fixed", "uncertainty"]),
                 default=None,
                 help="fixed: the preset's weights (paper 1/1.5/0.2); uncertainty: learned (Kendall et al. 2018)."),
    click.option("--loss-weighting-lr", type=float, default=None,
                 help="Learning rate of the learned loss weights (uncertainty) [default: 0.01]."),
    click.option("--aux-ramp", type=float, default=None,
                 help="Fraction of the steps over which distillation and contrast weights rise from 0 [paper: 0]."),
    click.option("--cam-align-corners/--no-cam-align-corners", default=None,
                 help="Upsample CAMs with align_corners, as the authors' code [paper: on; demo: off]."),
    click.option("--bank-init", type=click.Choice(["empty", "random"]), default=None,
                 help="Contrast memory bank at step 1: empty, or random unit vectors as the authors' code "
                      "[paper: random; demo: empty]."),
    click.option("--fg-threshold-scope", type=click.Choice(["class", "image"]), default=None,
                 help="FG threshold relative to each class map's max, or to the image's max over all classes "
                      "as the authors' code [paper: image; demo: class]."),
    click.option("--augment/--no-augment", default=None,
                 help="Random flips/rotations of the stored feature maps [default: the preset's]."),
    click.option("--seed", type=int, default=None, help="[default: 0]"),
    click.option("--device", default=None, help="auto, cpu, cuda, ..."),
    click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=None,
                 help="The head's forward (losses, optimizer state stay fp32). auto: bf16 where the device computes "
                      "it natively (AMX, AVX512-BF16, a bf16 GPU), else fp32 [default: auto]."),
    click.option("--loader-workers", "--workers", "workers", type=int, default=None,
                 help="Store reading processes (--workers: the same, its older name) [default: 0 on CPU, 1 with a GPU]."),
    click.option("--memory-gb", type=click.FloatRange(min=0), default=None,
                 help="Read a store whose training arrays fit in this many GiB into RAM once [default: 4; 0: stream]."),
)
# Where and how a run computes, not what it learns: a resumed run may change these.
PLACEMENT_FLAGS = ("device", "workers", "memory_gb", "precision")
TRAIN_FLAGS = ("steps", "epochs", "batch_size", "lr", "warmup", "loss_weighting", "loss_weighting_lr", "aux_ramp",
               "cam_align_corners", "bank_init", "fg_threshold_scope", "augment", "seed", *PLACEMENT_FLAGS)
# The ablation switches: flag → (setting, its value when the flag is given).
ABLATION_SWITCHES = {"no_distill": ("distill", False), "no_contrast": ("contrast", False),
                     "no_text_init": ("text_init", False)}


def _given(name: str) -> bool:
    """Whether the user set this parameter (on the command line or from the environment), not its default."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


def _flag(name: str) -> str:
    return "--config" if name == "config_file" else "--" + name.replace("_", "-")


def changed_on_resume(saved: dict, values: dict) -> list[str]:
    """The given flags of what a run learns (schedule, losses, preset, config file) whose values differ from
    those the run was started with: `train --resume` keeps the run's own and so refuses them."""
    from construct.train.config import TrainConfig, read_config_file

    changed = []
    if _given("preset") and values["preset"] != saved.get("preset"):
        changed.append("--preset")
    if _given("config_file"):
        data = read_config_file(Path(values["config_file"]))
        # A file's settings compare as the run records them (tuples as lists, as TrainConfig.to_dict).
        recorded = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
                                  if k in TrainConfig.__dataclass_fields__}).to_dict()
        if any(saved.get(k) != recorded[k] for k in data if k in recorded):
            changed.append("--config")
    for name in TRAIN_FLAGS:
        if name not in PLACEMENT_FLAGS and _given(name) and values[name] != saved.get(name):
            changed.append(_flag(name))
    for name, (setting, value) in ABLATION_SWITCHES.items():
        if _given(name) and saved.get(setting) != value:
            changed.append(_flag(name))
    return changed


def stain_norm_option(help_text: str) -> Callable:
    """--stain-norm, the same on every command that runs a model on new tiles."""
    return click.option("--stain-norm", type=click.Choice(STAIN_METHODS), default=DEFAULT_STAIN_NORM, show_default=True,
                        help=help_text)


def train_options(fn: Callable) -> Callable:
    for option in reversed(TRAIN_OPTIONS):
        fn = option(fn)
    return fn


@main.command()
@click.option("--features", type=click.Path(path_type=Path), required=True, help="Train feature store (from `construct extract`).")
@click.option("--val-features", type=click.Path(path_type=Path), default=None, help="Validation store: mIoU every epoch (at most 30 times), best head kept.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder [default: runs/construct].")
@train_options
@click.option("--no-distill", is_flag=True, help="Ablation: no structural distillation.")
@click.option("--no-contrast", is_flag=True, help="Ablation: no FG/BG contrastive term.")
@click.option("--no-text-init", is_flag=True, help="Ablation: random prototypes instead of CONCH text embeddings.")
@click.option("--resume", is_flag=True, help="Continue a killed run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def train(features, val_features, out, preset, config_file, no_distill, no_contrast, no_text_init, resume, quiet,
          **flags) -> None:
    """Learn the ConStruct head (adapters, prototypes, projections) from a feature store only."""
    from construct.distributed import is_main_process
    from construct.train.config import resolve_config, resumed_config
    from construct.train.trainer import train as run_train

    out = out or Path("runs/construct")
    if resume:  # a resumed run keeps the settings it was started with
        from construct.runs import HEAD_KIND, read_kind

        saved = read_kind(out, HEAD_KIND, "train --resume")["train"]
        changed = changed_on_resume(saved, {"preset": preset, "config_file": config_file, "no_distill": no_distill,
                                            "no_contrast": no_contrast, "no_text_init": no_text_init, **flags})
        if changed:
            raise ConstructError(f"{out}: --resume continues the run with the settings it was started with; "
                                 f"{', '.join(changed)} differ (use another --out for a new run)")
        # The run folder may have moved; where it runs (device, loader processes, memory) may change too.
        saved.update(out=str(out), **{k: flags[k] for k in PLACEMENT_FLAGS if flags[k] is not None})
        cfg = resumed_config(saved)
    else:
        cfg = resolve_config(
            preset, config_file, features=str(features), val_features=str(val_features) if val_features else None,
            out=str(out), distill=False if no_distill else None, contrast=False if no_contrast else None,
            text_init=False if no_text_init else None, **{k: flags[k] for k in TRAIN_FLAGS},
        )
    from construct.store import FeatureStore

    if is_main_process():  # under torchrun, rank 0 speaks for every process
        warn_random(FeatureStore.open(cfg.features).recipes.values())
    result = run_train(cfg, resume=resume, progress=not quiet)
    if not is_main_process():
        return
    best = f", best val mIoU {result.best_miou:.2f}" if result.best_miou is not None else ""
    click.echo(f"run: {result.run} ({result.n_trainable:,} trainable parameters; final loss "
               f"{result.final_loss:.4f}{best}; {result.seconds:.1f} s)")


@main.command()
@click.option("--features", type=click.Path(path_type=Path), required=True, help="Train feature store.")
@click.option("--val-features", type=click.Path(path_type=Path), required=True,
              help="Validation store (model selection; the score without --data).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder: a run per variant, ablation.json, ablation.md (rerunning skips finished variants).")
@click.option("--variants", default="full,no-distill,no-contrast,no-text-init,bce-only", show_default=True,
              help="Comma-separated subset.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Dataset root: refine (gate gt) and score each variant on --split.")
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True)
@click.option("--crf-workers", type=int, default=2, show_default=True, help="CRF processes of refine.")
@train_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def ablate(features, val_features, out, variants, data, split, crf_workers, preset, config_file, quiet,
           **flags) -> None:
    """Train the paper's ablation variants from one store with one seed and schedule, and tabulate them.

    \b
    Variants: full, no-distill, no-contrast, no-text-init, bce-only. Each is an ordinary run in
    OUT/<variant>/; OUT/ablation.json maps each to its metrics (eval's keys with --data, else the
    validation mIoU/mDice/IoU of its best head). Under torchrun the variants are shared out.
    """
    from construct.ablate import AblateConfig, parse_variants, run_ablation
    from construct.distributed import is_main_process
    from construct.store import FeatureStore

    train_flags = {"features": str(features), "val_features": str(val_features), **{k: flags[k] for k in TRAIN_FLAGS}}
    cfg = AblateConfig(out=out, preset=preset, config_file=config_file, train_flags=train_flags,
                       variants=parse_variants(variants), data=data, split=split, crf_workers=crf_workers,
                       progress=not quiet)
    if is_main_process():
        warn_random(FeatureStore.open(features).recipes.values())
    run_ablation(cfg, echo=click.echo)


@main.command()
@click.option("--run", "--model", "run", type=click.Path(path_type=Path), required=True,
              help="Run folder from `construct train` (head) or `construct distill` (student). Under torchrun "
                   "spell it --model (torchrun's own parser takes --run for its --run-path).")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Dataset root (BCSS-WSSS layout).")
@click.option("--split", type=click.Choice(SPLITS), default=None, help="Split of --data [default: test].")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Instead of --data: any folder of tiles of the run's size (no labels; gate pred).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Mask folder [default: RUN/predictions/<split or images folder>].")
@click.option("--gate", type=click.Choice(["gt", "labels", "pred", "none"]), default=None,
              help="Classes allowed per tile: labels (file names; train default), gt (ground-truth masks; "
                   "valid/test default), pred (the model's own class scores; --images default), none.")
@click.option("--pred-threshold", type=float, default=0.5, show_default=True, help="Probability for --gate pred.")
@click.option("--tta/--no-tta", default=None,
              help="Test-time augmentation: 6 forwards (hflip x brightness 0.9/1/1.1) for a head, 2 (hflip) for a "
                   "student [default: on for a head, off for a student].")
@click.option("--crf/--no-crf", default=None,
              help="Dense CRF, or argmax of the scores [default: on for a head, off for a student].")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Tiles per forward (x6 with TTA).")
@click.option("--crf-workers", "--workers", "workers", type=int, default=2, show_default=True,
              help="CRF (and mask writing) processes, 0: in the main process (--workers: the same, its older name).")
@click.option("--loader-workers", type=int, default=1, show_default=True,
              help="Image decoding processes (0: in the main process).")
@click.option("--save-scores", is_flag=True, help="Also write scores/<stem>.npy (float16, classes + background).")
@click.option("--head", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which weights of the run (head or student).")
@click.option("--conch", default=None, help="CONCH weights if not where the run recorded them (fingerprint-checked).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@precision_option("CONCH's forward (head run) or the student's", "the run's own --precision if it was given one, else ")
@stain_norm_option("Normalise the tiles' stain to the run's reference, estimated once over the split or folder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def refine(run, data, split, images, out, gate, pred_threshold, tta, crf, batch_size, workers, loader_workers,
           save_scores, head, conch, device, precision, stain_norm, quiet) -> None:
    """Masks from a run: a head run runs live CONCH with TTA, CAMs, background channel, Dense CRF; a
    student run (from `construct distill`) runs its network alone.

    Re-running the same command resumes: tiles whose mask exists are skipped.
    """
    from construct.backbones.recipe import BackboneRecipe
    from construct.refine import RefineConfig
    from construct.refine import refine as run_refine
    from construct.runs import read_run_config

    if data is not None and split is None:
        split = "test"
    cfg = RefineConfig(
        run=run, data=data, split=split, images=images, out=out, gate=gate, pred_threshold=pred_threshold,
        tta=tta, crf=crf, batch_size=batch_size, workers=workers, loader_workers=loader_workers,
        save_scores=save_scores,
        head=head, conch=conch, device=device, precision=precision, stain_norm=stain_norm,
    )
    conch_recipe = read_run_config(run).get("backbones", {}).get("conch")
    if conch_recipe is not None:
        warn_random([BackboneRecipe.from_dict(conch_recipe)])
    result = run_refine(cfg, progress=not quiet)
    crf_note = "CRF" if result.crf else "no CRF"
    tta_note = "TTA" if result.tta else "no TTA"
    click.echo(
        f"masks: {result.out} ({result.n_written} written, {result.n_skipped} already there, of "
        f"{result.n_images}; gate {result.gate}, {tta_note}, {crf_note}; {result.seconds:.1f} s, "
        f"{result.tiles_per_s:.1f} tiles/s)"
    )


@main.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--run", "--model", "run", type=click.Path(path_type=Path), required=True,
              help="A student run (`construct distill`: fast) or a head run (`construct train`: live CONCH). "
                   "Under torchrun spell it --model (torchrun's own parser takes --run for its --run-path).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder: OUT/<slide>/ and OUT/summary.csv.")
@click.option("--mpp", type=float, default=None, help="Model resolution in µm/px [default: the run's training tiles'].")
@click.option("--slide-mpp", type=float, default=None,
              help="µm/px of the slides' level 0; overrides their metadata (which may be missing or wrong).")
@click.option("--no-upsample", is_flag=True,
              help="Refuse slides coarser than the model's resolution (by over 20%) instead of upsampling them.")
@click.option("--mask-values", type=click.Choice(["dataset", "qupath"]), default="dataset", show_default=True,
              help="mask.ome.tif values: the dataset's mask indices, or 0 = background and classes 1..N "
                   "(QuPath, napari); mask_classes.csv says which.")
@click.option("--overlap", type=int, default=None, help="Tile overlap in px at the model's resolution [default: a quarter of the training tile].")
@click.option("--tile-size", type=int, default=None,
              help="Window a student run reads, px at the model's resolution: larger windows mean fewer tiles and "
                   "less overlap (a multiple of the student's stride) [default: the training tile].")
@click.option("--tissue-threshold", type=float, default=None,
              help="Saturation above which a pixel is tissue (paler tissue touching it joins it; ink, edges and "
                   "glass never do) [default: Otsu, clamped].")
@click.option("--vector-mpp", type=float, default=VECTOR_MPP, show_default=True,
              help="µm/px the GeoJSON outlines are traced at (never finer than the model's).")
@click.option("--min-area-um2", type=float, default=MIN_AREA_UM2, show_default=True,
              help="GeoJSON regions and holes smaller than this are dropped (the mask keeps every pixel).")
@click.option("--tta/--no-tta", default=False, show_default=True,
              help="Test-time augmentation: 6-way for a head run, flips for a student.")
@click.option("--pred-threshold", type=float, default=0.5, show_default=True, help="Classifier probability that lets a class into a tile.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Tiles per forward.")
@click.option("--head", type=click.Choice(["best", "last"]), default="best", show_default=True, help="Which head weights.")
@click.option("--conch", default=None, help="CONCH weights if not where the run recorded them (fingerprint-checked).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@precision_option("CONCH's forward (head run) or the student's", "the run's own --precision if it was given one, else ")
@stain_norm_option("Normalise each slide's stain to the run's reference, estimated once from its tissue.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def slide(slides, run, out, mpp, slide_mpp, no_upsample, mask_values, overlap, tile_size, tissue_threshold,
          vector_mpp, min_area_um2, tta, pred_threshold, batch_size, head, conch, device, precision, stain_norm,
          quiet) -> None:
    """Segment whole slides (SVS, NDPI, MRXS, tiled TIFF; files, folders or a CSV with a `path` column).

    Writes OUT/<slide>/ mask.ome.tif (values in mask_classes.csv), annotations.geojson (QuPath), overlay.png,
    tissue.png, summary.json and OUT/summary.csv. Finished slides are skipped when rerun; a failed slide is reported and the
    others go on (exit status 1 at the end, with the list).
    """
    from construct.distributed import session
    from construct.inference.factory import load_predictor
    from construct.slide.model import target_mpp
    from construct.slide.run import SlideConfig, list_slides, segment_slides

    paths = list_slides(list(slides))
    with session(device) as (world, dev):
        model = load_predictor(run, tta=tta, device=str(dev), precision=precision, head=head, conch=conch,
                               tile_size=tile_size)
        target = target_mpp(model, mpp)
        if world.is_main:
            warn_random(model.backbones.values())
        cfg = SlideConfig(out=out, target_mpp=target, slide_mpp=slide_mpp, no_upsample=no_upsample,
                          mask_values=mask_values, overlap=model.default_overlap if overlap is None else overlap,
                          tissue_threshold=tissue_threshold, batch_size=batch_size, pred_threshold=pred_threshold,
                          vector_mpp=vector_mpp, min_area_um2=min_area_um2, meta={"model": model.describe()},
                          stain_norm=stain_norm, run=run)
        result = segment_slides(paths, cfg, model.predictor, progress=not quiet and world.is_main,
                                echo=lambda line: click.echo(line, err=True), world=world)
    if not world.is_main:
        return  # under torchrun, rank 0 reports for every process
    no_tissue = f"; {len(result.no_tissue)} with no tissue" if result.no_tissue else ""
    click.echo(f"slides: {out} ({len(result.done)} segmented, {len(result.skipped)} already done, "
               f"{len(result.failed)} failed, of {len(paths)}{no_tissue})")
    if result.failed:
        for _path, message in result.failed:
            click.echo(f"  failed: {message}", err=True)
        raise click.ClickException(f"{len(result.failed)} of {len(paths)} slides failed (listed above)")


@main.command()
@click.option("--run", "--model", "--teacher", "run", type=click.Path(path_type=Path), required=True,
              help="Stage-1 run (from `construct train`): the teacher. Under torchrun spell it --model or "
                   "--teacher (torchrun's own parser takes --run for its --run-path).")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Dataset root: train (targets) and valid (model selection).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Student run folder.")
@click.option("--targets", type=click.Path(path_type=Path), default=None,
              help="Teacher targets made elsewhere [default: made, or reused, in RUN/targets/].")
@click.option("--classes", default="bcss", show_default=True, help="The dataset's class set: bcss, luad or a JSON file.")
@click.option("--arch", type=click.Choice(ARCHS), default="unet", show_default=True, help="Student network.")
@click.option("--encoder", type=click.Choice(list(ENCODERS)), default="resnet18", show_default=True,
              help="Student encoder.")
@click.option("--encoder-weights", default="none", show_default=True, help="none, imagenet (hub download) or a local file.")
@click.option("--epochs", type=float, default=20, show_default=True,
              help="Passes over the train split (a fraction stops part-way through the last, as in train).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW learning rate, cosine decay.")
@click.option("--crop", type=int, default=None, help="Train on random crops of this many px (multiple of 32) [default: whole tiles].")
@click.option("--loss-weighting", "--weighting", "weighting", type=click.Choice(WEIGHTINGS), default="uncertainty",
              show_default=True, help="Loss terms weighted by learned uncertainty (Kendall et al. 2018) or by "
                                      "--w-mse/--w-ce (--weighting: the same, its older name).")
@click.option("--w-mse", type=float, default=1.0, show_default=True, help="Fixed weight of the soft-score MSE.")
@click.option("--w-ce", type=float, default=1.0, show_default=True, help="Fixed weight of the boundary-weighted CE.")
@click.option("--tta/--no-tta", default=True, show_default=True, help="Teacher targets with the 6-way TTA.")
@click.option("--crf/--no-crf", default=True, show_default=True,
              help="Teacher pseudo-masks by the Dense CRF, or by argmax of the scores.")
@click.option("--conch", default=None, help="CONCH weights if not where the run recorded them (fingerprint-checked).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--crf-workers", "--workers", "workers", type=int, default=2, show_default=True,
              help="CRF processes for the targets (--workers: the same, its older name).")
@click.option("--loader-workers", type=int, default=0, show_default=True,
              help="Image decoding processes for training (0: in the main process).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, ...")
@precision_option("The teacher's forward and the student's (losses, optimizer state stay fp32)",
                  "for the teacher, its run's own --precision if it was given one, else ")
@click.option("--memory-gb", type=click.FloatRange(min=0), default=DEFAULT_MEMORY_GB, show_default=True,
              help="Read targets that fit in this many GiB into RAM once (0: stream them).")
@stain_norm_option("Normalise the train tiles' stain to the teacher's reference before it labels them.")
@click.option("--stain-augment", type=click.FloatRange(min=0, max=1), default=DEFAULT_STAIN_AUGMENT, show_default=True,
              help="Random HED stain perturbation of the student's training tiles: scale U(1-s, 1+s), shift (0: off).")
@click.option("--lab-augment", type=click.FloatRange(min=0, max=1), default=DEFAULT_LAB_AUGMENT, show_default=True,
              help="Random Reinhard-style colour transfer of the student's training tiles: tissue CIELAB mean "
                   "shifted by up to 50s per channel, spread scaled by U(1-s, 1+s) (0: off).")
@click.option("--resume", is_flag=True, help="Continue a killed student run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def distill(run, data, out, targets, classes, arch, encoder, encoder_weights, epochs, batch_size, lr, crop, weighting,
            w_mse, w_ce, tta, crf, conch, seed, workers, loader_workers, device, precision, memory_gb, stain_norm,
            stain_augment, lab_augment, resume, quiet) -> None:
    """Stage 2: train a fast student segmentation network on a run's pseudo-masks.

    The run labels the train split as refine does (file-name labels, TTA, CRF) into RUN/targets/ (resumable,
    reused); the student learns their soft scores and boundary-weighted masks. `construct refine --run OUT`
    then needs no CONCH.
    """
    from dataclasses import asdict

    from construct.distill.config import (
        EXTENDABLE,
        RESUME_FROM_COMMAND,
        DistillConfig,
        resumed_distill_config,
        saved_setting,
    )
    from construct.distill.trainer import distill as run_distill
    from construct.runs import STUDENT_KIND, is_run, read_kind

    cfg = DistillConfig(
        run=run, data=data, out=out, targets=targets, classes=classes, arch=arch, encoder=encoder,
        encoder_weights=encoder_weights, epochs=epochs, batch_size=batch_size, lr=lr, crop=crop, weighting=weighting,
        w_mse=w_mse, w_ce=w_ce, tta=tta, crf=crf, conch=conch, seed=seed, target_workers=workers,
        workers=loader_workers, device=device, precision=precision, memory_gb=memory_gb, stain_norm=stain_norm,
        stain_augment=stain_augment, lab_augment=lab_augment,
    )
    if resume and is_run(out):  # a resumed run keeps the settings it was started with
        saved = read_kind(out, STUDENT_KIND, "distill --resume")["distill"]
        values = cfg.to_dict()
        # Fields without a flag (weight decay, boundary weighting) count as not given.
        changed = [_flag(k) for k in values if k not in (*RESUME_FROM_COMMAND, *EXTENDABLE) and _given(k)
                   and values[k] != saved_setting(saved, k)]
        if changed:
            raise ConstructError(f"{out}: --resume continues the student with the settings it was started with; "
                                 f"{', '.join(changed)} differ (use another --out for a new run)")
        command = {k: v for k, v in asdict(cfg).items() if k in RESUME_FROM_COMMAND or (k in EXTENDABLE and _given(k))}
        cfg = resumed_distill_config(saved, command)
    result = run_distill(cfg, resume=resume, progress=not quiet)
    from construct.distributed import is_main_process

    if not is_main_process():  # under torchrun, rank 0 speaks for every process
        return
    best = f", best val mIoU {result.best_miou:.2f}" if result.best_miou is not None else ""
    click.echo(f"student: {result.run} ({result.n_parameters:,} parameters; targets {result.targets}; final loss "
               f"{result.final_loss:.4f}{best}; {result.seconds:.1f} s)")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("construct-demo"), show_default=True,
              help="Folder for everything the demo makes (rerunning in it reuses finished phases).")
@click.option("--train", "n_train", type=int, default=200, show_default=True, help="Synthetic training tiles.")
@click.option("--valid", "n_valid", type=int, default=40, show_default=True, help="Synthetic validation tiles.")
@click.option("--test", "n_test", type=int, default=40, show_default=True, help="Synthetic test tiles.")
@click.option("--steps", type=int, default=None, help="Training steps [default: the demo preset's, 720].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--crf-workers", "--workers", "workers", type=int, default=2, show_default=True,
              help="CRF processes (--workers: the same, its older name).")
@precision_option("Every model's forward")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def demo(out, n_train, n_valid, n_test, steps, seed, workers, precision, quiet) -> None:
    """The whole pipeline on synthetic data with random-tiny backbones: no download, no GPU.

    synth -> extract (train, valid) -> train (demo preset) -> refine (test) -> distill (a student) ->
    refine the student (test) -> eval (both), each printed with its equivalent command and time; writes
    OUT/metrics.json and OUT/report.html.
    """
    from construct.demo import METRICS_FILE, REPORT_FILE, DemoConfig, run_demo
    from construct.evaluate.table import format_table

    click.secho(RANDOM_WARNING.format(specs="conch=random-tiny, segformer=random-tiny"), fg="yellow", err=True)
    cfg = DemoConfig(out=out, n_train=n_train, n_valid=n_valid, n_test=n_test, seed=seed, steps=steps,
                     crf_workers=workers, precision=precision, progress=not quiet)
    result = run_demo(cfg, echo=click.echo)
    click.echo("\n" + format_table(result.metrics) + "\n")
    verdict = "beats" if result.beats_baselines else "does NOT beat"
    click.echo(f"test mIoU {result.metrics['mIoU']:.2f} {verdict} the trivial baselines ("
               + ", ".join(f"{k} {v['mIoU']:.2f}" for k, v in result.metrics["baselines"].items()) + ")")
    click.echo(f"done in {result.seconds:.0f} s: {out / METRICS_FILE}, {out / REPORT_FILE}")
