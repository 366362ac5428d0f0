"""``simcal infer``: the detector with calibrated head(s) reattached -> LVIS results json.

    simcal infer --checkpoint tiny.pth --head head.pth --mode sel --T 300 --data DIR --split val --out res.json
    torchrun --nproc_per_node 4 -m simcal infer ...      # images sharded, merged output identical

One detector forward per image: the calibrated head scores the same RoI features the
box head sees (``LongTailRoIHeads.score_fn``); boxes and masks come from the frozen
detector's own post-processing (per-class NMS 0.5, at most 300 detections per image).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from simcal.data.errors import input_error


def main(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from simcal.calibrate.trainer import load_head
    from simcal.data.annotations import load_annotations
    from simcal.data.cli import write_json_atomic
    from simcal.data.detection_dataset import DetectionDataset, collate
    from simcal.detector.checkpoint import load_checkpoint
    from simcal.data.layout import resolve_dataset
    from simcal.detector.distributed import finish_distributed, init_distributed, resolve_device
    from simcal.detector.predict import predict
    from simcal.infer.scoring import make_score_fn, tau_normalize_

    if args.props_gt:
        raise input_error(None, "--props-gt is not built yet (issue [6/6])")
    rank, world, local_rank = init_distributed()
    device = resolve_device(args.device, local_rank)
    model, ck = load_checkpoint(args.checkpoint, device)
    heads = args.head or []
    if len(heads) > 1:
        raise input_error(None, f"{len(heads)} heads given, but this detector has one classification stage",
                          "pass one --head")
    head = None
    if heads:
        head, hck = load_head(heads[0])
        if hck["detector_fingerprint"] != ck["detector_fingerprint"]:
            raise input_error(heads[0], f"was calibrated on features of another detector than {args.checkpoint}",
                              "extract a cache with this checkpoint and calibrate again")
        head = head.to(device)
    if args.mode != "orig" and head is None:
        raise input_error(None, f"--mode {args.mode} needs --head HEAD.pth")
    counts = [c["instance_count"] for c in ck["category_stats"]]
    if args.posthoc == "tau_norm":
        tau_normalize_(model.roi_heads.box_predictor.cls_score, args.gamma)
    model.roi_heads.score_fn = make_score_fn(counts, args.mode, head, args.T, args.posthoc, args.gamma)

    ann_path, image_root = resolve_dataset(args.data, args.split, args.ann, args.images)
    ann = load_annotations(ann_path)
    from simcal.detector.checkpoint import check_categories

    check_categories(ck, ann.mapping, args.checkpoint, ann_path)
    ds = DetectionDataset(ann, image_root, with_masks=False)
    ds.check_files()
    mine = list(range(rank, len(ds), world))
    loader = DataLoader(Subset(ds, mine), batch_size=args.batch_size, collate_fn=collate)
    t0 = time.perf_counter()
    with tqdm(total=len(mine), desc=f"infer {args.mode}", unit="img", disable=None if rank == 0 else True) as bar:
        results = predict(model, loader, ann.mapping, device, bar)
    if world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    if rank == 0:
        order = {img["id"]: k for k, img in enumerate(ann.images)}
        results.sort(key=lambda r: order[r["image_id"]])  # stable: within an image, detector order
        out = Path(args.out)
        write_json_atomic(out, results, separators=(",", ":"))
        cfg = {k: v for k, v in vars(args).items() if k != "func"}
        cfg.update({"detector_fingerprint": ck["detector_fingerprint"], "annotations": str(ann_path),
                    "world_size": world, "seconds": round(time.perf_counter() - t0, 2),
                    "categories": ck["categories"]})
        write_json_atomic(out.with_name(out.name + ".config.json"), cfg, indent=2)
        print(f"wrote {out}: {len(results)} detections on {len(ds)} images "
              f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    finish_distributed()
    return 0
