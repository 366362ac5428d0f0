"""``simcal infer``: the detector with calibrated head(s) reattached -> LVIS results json.

    simcal infer --checkpoint tiny.pth --head head.pth --mode sel --T 300 --data DIR --split val --out res.json
    simcal infer --checkpoint tiny.pth --sweep variants.json --data DIR --split val --out DIR/
    torchrun --nproc_per_node 4 -m simcal infer ...      # images sharded, merged output identical

One detector forward per image: the calibrated head scores the same RoI features the
box head sees (``LongTailRoIHeads.score_fn``); boxes and masks come from the frozen
detector's own post-processing (per-class NMS 0.5, at most ``--max-dets`` detections
per image). A sweep shares the backbone and RPN between its variants
(:mod:`simcal.infer.variants`) and skips variants whose results already exist with the
same configuration, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from simcal.data.errors import input_error


def _load_heads(specs, ck: dict, checkpoint: str, device) -> dict[str, torch.nn.Module]:
    from simcal.calibrate.trainer import load_head

    heads = {}
    for path in sorted({s.head for s in specs if s.head}):
        head, hck = load_head(path)
        if hck["detector_fingerprint"] != ck["detector_fingerprint"]:
            raise input_error(path, f"was calibrated on features of another detector than {checkpoint}",
                              "extract a cache with this checkpoint and calibrate again")
        heads[path] = head.to(device).eval()
    return heads


def _config_of(spec, args: argparse.Namespace, ck: dict, ann_path: Path) -> dict:
    return {**spec.to_dict(), "checkpoint": str(args.checkpoint), "detector_fingerprint": ck["detector_fingerprint"],
            "annotations": str(ann_path)}


def main(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from simcal.data.annotations import load_annotations
    from simcal.data.cli import write_json_atomic
    from simcal.data.detection_dataset import DetectionDataset, collate
    from simcal.data.layout import resolve_dataset
    from simcal.detector.checkpoint import check_categories, load_checkpoint
    from simcal.detector.distributed import finish_distributed, init_distributed, resolve_device
    from simcal.infer.variants import VariantSpec, build_score_fn, check_variant, predict_variants, read_variants

    out = Path(args.out)
    if args.sweep:
        specs = read_variants(args.sweep)
        targets = {s.name: out / s.name / "results.json" for s in specs}
    else:
        if args.head and len(args.head) > 1:
            raise input_error(None, f"{len(args.head)} heads given, but this detector has one classification stage",
                              "pass one --head")
        specs = [VariantSpec(name="results", mode=args.mode, head=args.head[0] if args.head else None, T=args.T,
                             posthoc=args.posthoc, gamma=args.gamma, props_gt=args.props_gt,
                             max_dets=args.max_dets)]
        check_variant(specs[0])
        targets = {"results": out}

    rank, world, local_rank = init_distributed()
    device = resolve_device(args.device, local_rank)
    model, ck = load_checkpoint(args.checkpoint, device)
    heads = _load_heads(specs, ck, args.checkpoint, device)
    ann_path, image_root = resolve_dataset(args.data, args.split, args.ann, args.images)
    ann = load_annotations(ann_path)
    check_categories(ck, ann.mapping, args.checkpoint, ann_path)

    def done(spec) -> bool:  # resumable sweeps: same variant, same detector, same data -> keep
        cfg = targets[spec.name].with_name(targets[spec.name].name + ".config.json")
        try:
            old = json.loads(cfg.read_text())
        except (OSError, ValueError):
            return False
        new = _config_of(spec, args, ck, ann_path)
        return targets[spec.name].exists() and all(old.get(k) == v for k, v in new.items())

    todo = [s for s in specs if not (args.sweep and done(s))]
    if len(todo) < len(specs):
        print(f"reusing {len(specs) - len(todo)} finished variant(s) in {out}", file=sys.stderr)
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
        res = results[spec.name]
        if world > 1:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, res)
            res = [r for part in gathered for r in part]
        if rank != 0:
            continue
        res.sort(key=lambda r: order[r["image_id"]])  # stable: within an image, detector order
        path = targets[spec.name]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, res, separators=(",", ":"))
        cfg = {**{k: v for k, v in vars(args).items() if k != "func"}, **_config_of(spec, args, ck, ann_path),
               "world_size": world, "seconds": round(seconds, 2), "variants_in_pass": len(todo),
               "categories": ck["categories"]}
        write_json_atomic(path.with_name(path.name + ".config.json"), cfg, indent=2)
        print(f"wrote {path}: {len(res)} detections on {len(ds)} images", file=sys.stderr)
    if rank == 0:
        print(f"{len(todo)} variant(s) in {seconds:.1f} s", file=sys.stderr)
    finish_distributed()
    return 0
