"""Stage 2 against stage 1 on the same test tiles: inference speed and test mIoU.

Quality: the demo pipeline (synthetic 200/40/40 tiles, random-tiny backbones, demo preset) trains the
ConStruct run, distills a student from it (`construct distill`, the demo's student settings unless
overridden) and scores both on the test split with `construct eval`: `teacher mIoU` (refine: TTA + CRF,
gate gt) and `student mIoU` (refine of the student run: one forward, argmax, gate gt).
Speed: over the same test tiles, teacher refine as a user runs it with the full-size CONCH architecture
(ViT-B/16 at 224 px, `random` weights: speed does not depend on the values) and a full-width head,
6-way TTA, Dense CRF with 2 worker processes; then the student refine (its defaults). Both go through the
one inference pipeline with their PNG sinks; model building is not counted.

    .venv/bin/python benchmarks/student.py    # prints `teacher mIoU`, `student mIoU`, ends with `speedup: X`
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from _common import base_parser, finish, report, workdir

from construct.backbones.registry import create_backbone
from construct.data.classes import BCSS
from construct.data.dataset import list_split
from construct.data.sources import SampleSource
from construct.demo import DEMO_STUDENT_EPOCHS, DemoConfig, run_demo
from construct.head.model import ConStructHead, HeadConfig
from construct.inference.head import HeadPredictor
from construct.inference.pipeline import run_inference
from construct.inference.sinks import MaskSink
from construct.inference.student import StudentPredictor
from construct.inference.tta import paper_variants
from construct.runtime import resolve_device
from construct.student.io import load_student


def tiles_per_s(predictor, samples, crf: bool, workers: int, batch_size: int) -> float:
    source = SampleSource(samples, BCSS, 224, with_masks=True)
    with tempfile.TemporaryDirectory() as out:
        stats = run_inference(source, predictor, [MaskSink(Path(out), BCSS)], "gt", crf=crf,
                              batch_size=batch_size, workers=workers, progress=False)
    return stats.n_written / stats.seconds


def main() -> None:
    p = base_parser("student", __doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=24, help="test tiles timed (the mIoUs use the whole test split)")
    p.add_argument("--student-epochs", type=int, default=DEMO_STUDENT_EPOCHS)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    device = resolve_device(args.device)
    with workdir(args.workdir) as root:
        demo = run_demo(DemoConfig(out=root / "demo", student_epochs=args.student_epochs, progress=False),
                        echo=print)
        teacher_miou, student_miou = demo.metrics["mIoU"], demo.metrics["student"]["mIoU"]
        report("teacher test mIoU (TTA + CRF)", teacher_miou, "%")
        report("student test mIoU (one forward, argmax)", student_miou, "%")
        samples = list_split(root / "demo" / "data", "test", BCSS)[: args.tiles]

        conch = create_backbone("conch", args.conch, 224)
        head = ConStructHead(HeadConfig(n_classes=len(BCSS), width=768, embed_dim=512))
        teacher = HeadPredictor(conch, head, BCSS, 224, paper_variants(), "fp32", device)
        teacher_speed = tiles_per_s(teacher, samples, crf=True, workers=2, batch_size=args.batch_size)
        student_net, meta = load_student(root / "demo" / "student")
        student = StudentPredictor(student_net, BCSS, 224, device=device)
        student_speed = tiles_per_s(student, samples, crf=False, workers=0, batch_size=args.batch_size)
        n_student = sum(t.numel() for t in student_net.parameters())
        n_teacher = sum(t.numel() for t in conch.parameters()) + sum(t.numel() for t in head.parameters())
        report(f"teacher refine ({args.conch} CONCH + head, TTA + CRF)", teacher_speed, "tiles/s")
        report(f"student refine ({meta['student']['arch']} / {meta['student']['encoder']})", student_speed, "tiles/s")
        report("parameters teacher / student", f"{n_teacher:,} / {n_student:,}")
        print(f"teacher mIoU: {teacher_miou:.2f}")
        print(f"student mIoU: {student_miou:.2f}")
        figures = {"teacher_miou": teacher_miou, "student_miou": student_miou,
                   "teacher_tiles_per_s": teacher_speed, "student_tiles_per_s": student_speed,
                   "n_timed_tiles": len(samples), "student": meta["student"], "teacher_parameters": n_teacher,
                   "student_parameters": n_student, "torch_threads": torch.get_num_threads(),
                   "demo_phases": demo.metrics["demo"]["phases"]}
        finish("speedup", student_speed / teacher_speed, figures, args, digits=1)


if __name__ == "__main__":
    main()
