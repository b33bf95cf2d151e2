"""Why an auxiliary loss at a small weight can undo the classifier: the size of each term's gradient at
the CAMs (the tensors the classifier and the masks are read from), against the classification term's.

For each of a few batches of a store, at the head's initialisation and after `--warm` steps of BCE alone
(the CAMs then follow the image labels), it back-propagates each weighted term separately to the per-level
CAMs (`cams`, before ReLU and min-max) and to the distilled level's adapted features, and prints the
ratios ||grad of w_k·L_k|| / ||grad of w_cls·L_cls||. The last line is `contrast_to_cls_at_cams: X` after the
warm-up.

    python benchmarks/aux_gradients.py --features features/train.zarr [--preset demo] [--warm 100]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_parser, finish  # noqa: E402

from construct.head.model import ConStructHead  # noqa: E402
from construct.head.pooler import ContrastiveHead  # noqa: E402
from construct.seeding import seeded_init  # noqa: E402
from construct.store import FeatureStore  # noqa: E402
from construct.train.config import resolve_config  # noqa: E402
from construct.train.data import epoch_batches  # noqa: E402
from construct.train.losses import MemoryBank  # noqa: E402
from construct.train.objective import compute_losses  # noqa: E402
from construct.train.trainer import _head_config, _to_maps  # noqa: E402

TERMS = ("cls", "distill", "contrast")


def norm(grads) -> float:
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))


def term_gradients(head, chead, maps, labels, cfg, bank) -> dict[str, dict[str, float]]:
    """||d(w_k L_k)/d cams|| (all CAM levels together) and ||d(w_k L_k)/d features of the distilled level||."""
    captured = {}
    forward = head.forward

    def keep(taps, with_cams=True):
        out = forward(taps, with_cams)
        captured["out"] = out
        return out

    head.forward = keep
    try:
        losses = compute_losses(head, chead, maps, labels, cfg, bank)
    finally:
        head.forward = forward
    out = captured["out"]
    cams = [out.cams[k] for k in head.config.cam_levels]
    feats = [out.features[k] for k in head.config.distill_levels]
    weights = {"cls": cfg.w_cls, "distill": cfg.w_distill, "contrast": cfg.w_contrast}
    result = {}
    for name in TERMS:
        if name not in losses:
            continue
        grads = torch.autograd.grad(weights[name] * losses[name], cams + feats, retain_graph=True,
                                    allow_unused=True)
        cam_grads = [g for g in grads[:len(cams)] if g is not None]
        # The part of a CAM gradient that varies over the map: per-class min-max ignores a uniform shift,
        # so only this part changes a mask's shape.
        shape = [g - g.mean(dim=(-2, -1), keepdim=True) for g in cam_grads]
        result[name] = {"cams": norm(cam_grads), "shape": norm(shape), "features": norm(grads[len(cams):]),
                        "loss": float(losses[name].detach())}
    return result


def main() -> None:
    p = base_parser("aux_gradients", __doc__)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--preset", default="demo")
    p.add_argument("--warm", type=int, default=100, help="BCE-only steps before the second measurement")
    p.add_argument("--batches", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = resolve_config(args.preset, None, features=str(args.features), device="cpu", workers=0)
    store = FeatureStore.open(args.features)
    hc = _head_config(cfg, store)
    with seeded_init(cfg.seed):
        head = ConStructHead(hc, torch.from_numpy(store.text_embeddings))
    chead = ContrastiveHead.from_state_dict({k: torch.from_numpy(v) for k, v in store.contrastive_head_state().items()})
    chead.requires_grad_(False).eval()
    names = sorted(set(head.input_taps) | {"conch_b12"} | {f"seg_s{k}" for k in hc.distill_levels})
    batches = epoch_batches(store.n_rows, cfg.batch_size, cfg.seed, 0)

    def measure(when: str) -> dict[str, dict[str, float]]:
        bank = MemoryBank(cfg.bank_size, hc.embed_dim)
        rows = []
        for b in batches[: args.batches]:
            data = store.read_batch(np.sort(b), names)
            maps = _to_maps({k: torch.from_numpy(v) for k, v in data.items()}, hc.grid, torch.device("cpu"))
            rows.append(term_gradients(head, chead, maps, torch.from_numpy(data["labels"]), cfg, bank))
        mean = {t: {k: float(np.mean([r[t][k] for r in rows])) for k in rows[0][t]} for t in rows[0]}
        for t, v in mean.items():
            ratio = (f"  x{v['cams'] / mean['cls']['cams']:.3g} of cls at the CAMs "
                     f"(shape part x{v['shape'] / max(mean['cls']['shape'], 1e-30):.3g}), "
                     f"x{v['features'] / max(mean['cls']['features'], 1e-12):.3g} at the features") if t != "cls" else ""
            print(f"{when:>12} {t:>8}: loss {v['loss']:.4g}, |grad| cams {v['cams']:.3g} (shape part "
                  f"{v['shape']:.3g}), features "
                  f"{v['features']:.3g}{ratio}")
        return mean

    at_init = measure("init")
    bce = resolve_config(args.preset, None, features=str(args.features), device="cpu", workers=0,
                         distill=False, contrast=False)
    opt = torch.optim.AdamW([q for q in head.parameters() if q.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    for i in range(args.warm):
        b = epoch_batches(store.n_rows, cfg.batch_size, cfg.seed, 1 + i // len(batches))[i % len(batches)]
        data = store.read_batch(np.sort(b), sorted(head.input_taps))
        maps = _to_maps({k: torch.from_numpy(v) for k, v in data.items()}, hc.grid, torch.device("cpu"))
        loss = compute_losses(head, None, maps, torch.from_numpy(data["labels"]), bce, None)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    warm = measure(f"after {args.warm}")
    ratio = warm["contrast"]["cams"] / warm["cls"]["cams"]
    print("cls's gradient at a CAM is the same at every position (its logit is the map's mean), so its shape part "
          "is rounding noise: the mask's shape is moved directly only by the auxiliary terms")
    finish("contrast_to_cls_at_cams", ratio, {"preset": args.preset, "warm_steps": args.warm, "init": at_init,
                                              "warm": warm}, args)


if __name__ == "__main__":
    main()
