"""``simcal infer``: the detector with calibrated head(s) reattached -> LVIS results json.

    simcal infer --checkpoint tiny.pth --head head.pth --mode sel --T 300 --data DIR --split val --out res.json
    simcal infer --checkpoint tiny.pth --sweep variants.json --data DIR --split val --out DIR/
    torchrun --nproc_per_node 4 -m simcal infer ...      # images sharded, merged output identical

One detector forward per image: the calibrated head scores the same RoI features the
box head sees (a ``score_fn`` per variant, ``LongTailRoIHeads.forward_variants``); boxes and masks come from the frozen
detector's own post-processing (per-class NMS 0.5, at most ``--max-dets`` detections
per image). A sweep shares the backbone and RPN between its variants
(:mod:`simcal.infer.variants`) and skips variants whose results already exist with the
same configuration, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from simcal.core.errors import input_error


def _load_heads(specs, ck: dict, checkpoint: str, dim: int,
                device) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """Every head the variants name, on ``device``, and a fingerprint of each (its configuration and cache)."""
    from simcal.calibrate.trainer import check_head_fits, load_head
    from simcal.core.manifest import fingerprint

    heads, prints = {}, {}
    stages = {}
    for path in sorted({h for s in specs for h in s.head_files()}):
        head, hck = load_head(path)
        check_head_fits(hck, path, ck, checkpoint, dim)
        heads[path], stages[path] = head.to(device).eval(), hck.get("stage")
        prints[path] = fingerprint({"config": hck["config"], "cache": hck["cache_fingerprint"]})
    for path, t in ((h, t) for s in specs for t, h in enumerate(s.stage_heads or []) if h):
        if stages[path] is not None and stages[path] != t:
            raise input_error(path, f"was calibrated on stage {stages[path]}'s cache, and is given for stage {t}",
                              "give each stage the head calibrated on its own cache")
    return heads, prints


def _specs(args: argparse.Namespace) -> tuple[list, dict[str, Path]]:
    """The variants to score and the results file of each."""
    from simcal.core.atomic import require_output
    from simcal.infer.variants import VariantSpec, check_variant, read_variants

    out = Path(args.out)
    require_output(out, "folder" if args.sweep else "file", "--out" + (" with --sweep" if args.sweep else ""),
                   "sweep/" if args.sweep else "results.json")
    if args.sweep:
        specs = read_variants(args.sweep)
        return specs, {s.name: out / s.name / "results.json" for s in specs}
    heads = args.head_ckpt or []
    stage_heads = [None if h == "orig" else h for h in heads] if len(heads) > 1 else None
    spec = VariantSpec(name="results", mode=args.mode, head_ckpt=heads[0] if len(heads) == 1 else None, T=args.T,
                       posthoc=args.posthoc, gamma=args.gamma, props_gt=args.props_gt, max_dets=args.max_dets,
                       stage_heads=stage_heads)
    check_variant(spec)
    return [spec], {"results": out}


def _gather(res: list, world: int) -> list:
    """Every rank's results, rank by rank (one process: as they are)."""
    if world == 1:
        return res
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, res)
    return [r for part in gathered for r in part]


def main(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from simcal.core.atomic import write_json
    from simcal.core.device import resolve_device
    from simcal.core.manifest import completed, write_manifest
    from simcal.data.annotations import load_annotations
    from simcal.data.detection_dataset import DetectionDataset, collate
    from simcal.data.layout import resolve_dataset
    from simcal.detector.checkpoint import check_categories, load_checkpoint
    from simcal.detector.distributed import finish_distributed, init_distributed
    from simcal.infer.variants import build_score_fn, check_stages, predict_variants

    specs, targets = _specs(args)
    rank, world, local_rank = init_distributed()
    device = resolve_device(args.device, local_rank)
    model, ck = load_checkpoint(args.checkpoint, device)
    check_stages(specs, model.roi_heads.num_stages, ck["arch"], args.checkpoint)
    heads, head_prints = _load_heads(specs, ck, args.checkpoint, model.roi_heads.box_head.fc6.in_features,
                                     device)
    ann_path, image_root = resolve_dataset(args.data, args.split, args.ann, args.images)
    ann = load_annotations(ann_path)
    check_categories(ck, ann.mapping, args.checkpoint, ann_path)

    def identity(spec) -> dict:
        return {"variant": {**spec.to_dict(), "name": None}, "head": [head_prints[h] for h in spec.head_files()],
                "detector_fingerprint": ck["detector_fingerprint"], "annotation_fingerprint": ann.fingerprint}

    todo = [s for s in specs if not completed(targets[s.name], "infer", identity(s))]
    if len(todo) < len(specs):
        print(f"reusing {len(specs) - len(todo)} finished variant(s) in {args.out}")
    if not todo:
        finish_distributed()
        return 0
    counts = [c["instance_count"] for c in ck["category_stats"]]
    cls_score = model.roi_heads.box_predictor.cls_score
    variants = {s.name: (build_score_fn(s, counts, heads, cls_score), s.max_dets) for s in todo}

    ds = DetectionDataset(ann, image_root, with_masks=False)
    ds.check_files()
    mine = list(range(rank, len(ds), world))
    loader = DataLoader(Subset(ds, mine), batch_size=args.batch_size, collate_fn=collate)
    t0 = time.perf_counter()
    desc = f"infer {len(todo)} variants" if args.sweep else f"infer {args.mode}"
    with tqdm(total=len(mine), desc=desc, unit="img", disable=None if rank == 0 else True) as bar:
        results = predict_variants(model, loader, ann.mapping, variants, device, bar)
    seconds = time.perf_counter() - t0
    order = {img["id"]: k for k, img in enumerate(ann.images)}
    for spec in todo:
        res = _gather(results[spec.name], world)
        if rank != 0:
            continue
        res.sort(key=lambda r: order[r["image_id"]])  # stable: within an image, detector order
        path = targets[spec.name]
        write_json(path, res, separators=(",", ":"))
        record = {**{k: v for k, v in vars(args).items() if k != "func"}, "variant": spec.to_dict(),
                  "checkpoint": str(args.checkpoint), "annotations": str(ann_path), "world_size": world,
                  "seconds": round(seconds, 2), "variants_in_pass": len(todo), "categories": ck["categories"]}
        write_manifest(path, "infer", identity(spec), record)
        print(f"wrote {path}: {len(res)} detections on {len(ds)} images")
    if rank == 0:
        print(f"{len(todo)} variant(s) in {seconds:.1f} s")
    finish_distributed()
    return 0
