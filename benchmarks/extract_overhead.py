"""How close `construct extract` runs to its limit: its images/s over the bare backbone forward's.

The bare forward is what extraction cannot avoid: CONCH's taps (with its contrastive embedding, which
the store keeps) and MiT-B1's stages on in-memory batches, same batch size, precision and device.
Extraction adds decoding the tiles, moving the taps to the host, float16/int8 conversion and the Zarr
writes; it is built so these overlap the forward (loader processes, a writer thread). The bare forward
is timed before and after the extraction and averaged, so a drift in machine load affects both sides.

    .venv/bin/python benchmarks/extract_overhead.py     # ends with `overhead_ratio: X`
"""

from __future__ import annotations

import math

import torch
from _common import base_parser, finish, median, report, synthetic_data, time_calls, workdir

from construct.backbones.registry import create_backbone
from construct.extract.config import ExtractConfig
from construct.extract.extractor import extract
from construct.runtime import autocast, resolve_device


def main() -> None:
    p = base_parser("extract_overhead", __doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=96, help="tiles extracted (a multiple of --batch-size is fairest)")
    p.add_argument("--batch-size", type=int, default=32, help="extract's default")
    p.add_argument("--precision", default="fp32", help="fp32 or bf16")
    p.add_argument("--store-dtype", default="float16", help="float16 or int8")
    p.add_argument("--workers", type=int, default=2, help="tile decoding processes (extract's default)")
    args = p.parse_args()
    device = resolve_device(args.device)
    with workdir(args.workdir) as work:
        data = synthetic_data(work / "data", n_train=args.images)
        conch = create_backbone("conch", args.conch, 224).to(device)
        segformer = create_backbone("segformer", args.segformer, 224).to(device)
        images = torch.rand(args.batch_size, 3, 224, 224, device=device)

        def forward() -> None:
            with torch.no_grad(), autocast(device, args.precision):
                conch.taps(images)
                segformer.taps(images)

        n_batches = math.ceil(args.images / args.batch_size)
        print(f"bare forward, {n_batches} batches of {args.batch_size}...")
        before = time_calls(forward, n_batches, device)
        print(f"construct extract, {args.images} tiles...")
        cfg = ExtractConfig(data=data, split="train", out=work / f"store-{args.store_dtype}.zarr",
                            conch=args.conch, segformer=args.segformer, batch_size=args.batch_size,
                            device=args.device, precision=args.precision, store_dtype=args.store_dtype,
                            workers=args.workers)
        res = extract(cfg, conch, segformer, progress=False)
        if res.n_extracted != args.images:
            raise SystemExit(f"{cfg.out}: already held rows; pass a fresh --workdir")
        print("bare forward again...")
        after = time_calls(forward, n_batches, device, warmup=0)
    bare_ips = args.batch_size / median(before + after)
    ratio = res.images_per_s / bare_ips
    print(f"extraction vs bare forward, batch {args.batch_size}, {args.precision}, {device}, store {args.store_dtype}:")
    report("bare forward images/s (before, after)",
           f"{args.batch_size / median(before):.3g}, {args.batch_size / median(after):.3g}")
    report("construct extract images/s", res.images_per_s)
    figures = {"bare_images_per_s": bare_ips, "bare_batch_seconds": before + after,
               "extract_images_per_s": res.images_per_s, "extract_seconds": res.seconds,
               "images": args.images, "random_weights": res.random_weights}
    finish("overhead_ratio", ratio, figures, args)


if __name__ == "__main__":
    main()
