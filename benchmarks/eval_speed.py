"""Speed and memory of ``simcal evaluate``: the fast backend vs the ``lvis`` reference.

An LVIS-scale generated case (1,230 synthetic categories with an LVIS-like
frequency mix, >= 2,000 images, ~100 detections per image with RLE masks; see
``simcal.evaluate.synthetic_cases``) is written to disk and evaluated by the real
CLI (``python -m simcal evaluate ...``) once per backend, each in its own process,
so that the time covers everything a user waits for (reading and validating the
files, the cap, both IoU types) and the peak memory is that process's max RSS.
Prints one JSON line: both wall times, their ratio, the largest difference over
every metric in the two METRICS.json files, and both peak RSS figures.

    python benchmarks/eval_speed.py            # 2,000 images, both IoU types (minutes: the reference is slow)
    python benchmarks/eval_speed.py --quick    # 300 images, for a smoke run
    python benchmarks/eval_speed.py --lvis-scale          # LVIS v0.5 val's shape (long: see below)
    python benchmarks/eval_speed.py --lvis-scale --quick  # the same shape per image, 40 images

``--lvis-scale``: LVIS v0.5 val's shape: 5,000 images of 400-640 px, 1,230 categories (30 % absent from
val), 1-20 ground-truth instances per image, 300 detections per image after the cap (300-330 before it),
every one with a mask (about 1.5 million masks). The JSON then also says whether the targets hold: the fast
backend at least 5x faster than the reference, at most half its peak memory, metrics equal within 1e-4.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.measure import run_child  # noqa: E402

#: LVIS v0.5 val: images, categories, GT instances per image, detections per image before the cap, sizes.
LVIS_VAL = {"images": 5000, "categories": 1230, "gt_per_image": (1, 20), "dets_per_image": (300, 330),
            "image_size": (400, 640), "absent_fraction": 0.3}
LVIS_QUICK_IMAGES = 40
#: The targets at LVIS scale: fast at least this many times faster, at most this share of the reference's
#: peak memory, metrics equal within this.
TARGETS = {"speedup": 5.0, "rss_ratio": 0.5, "max_metric_diff": 1e-4}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 images instead of 2,000 (with --lvis-scale: 40)")
    ap.add_argument("--lvis-scale", action="store_true",
                    help="LVIS v0.5 val's shape: 5,000 images, 1,230 categories, 300 detections per image, masks")
    ap.add_argument("--images", type=int, help="number of val images (default 2000, quick 300)")
    ap.add_argument("--categories", type=int, default=1230)
    ap.add_argument("--dets", type=int, default=100, help="mean detections per image (default 100)")
    ap.add_argument("--iou-type", choices=("bbox", "segm", "both"), default="both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="keep the generated files and outputs here (default: a temp dir, deleted)")
    args = ap.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="simcal-eval-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _measure(args, work)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def _measure(args: argparse.Namespace, work: Path) -> int:
    from simcal.evaluate.synthetic_cases import CaseSpec, make_case

    t0 = time.perf_counter()
    if args.lvis_scale:
        n_img = args.images or (LVIS_QUICK_IMAGES if args.quick else LVIS_VAL["images"])
        spec = CaseSpec(num_images=n_img, num_categories=LVIS_VAL["categories"],
                        dets_per_image=LVIS_VAL["dets_per_image"], gt_per_image=LVIS_VAL["gt_per_image"],
                        image_size=LVIS_VAL["image_size"], absent_fraction=LVIS_VAL["absent_fraction"],
                        neg_per_image=(0, 30))
    else:
        n_img = args.images or (300 if args.quick else 2000)
        spec = CaseSpec(num_images=n_img, num_categories=args.categories,
                        dets_per_image=(max(1, int(args.dets * 0.8)), int(args.dets * 1.2)),
                        gt_per_image=(1, 12), image_size=(160, 480), absent_fraction=0.3, neg_per_image=(0, 30))
    gt, train, res = make_case(spec, seed=args.seed)
    for name, doc in (("val.json", gt), ("train.json", train), ("results.json", res)):
        (work / name).write_text(json.dumps(doc))
    gen_s = time.perf_counter() - t0
    case = {"images": n_img, "categories": spec.num_categories, "val_instances": len(gt["annotations"]),
            "detections": len(res), "train_instances": len(train["annotations"]), "masks": True,
            "results_mb": round((work / "results.json").stat().st_size / 2**20, 1), "generate_s": round(gen_s, 1)}
    del gt, train, res

    out: dict = {"case": case, "lvis_scale": args.lvis_scale, "quick": args.quick, "iou_type": args.iou_type,
                 "max_dets": 300}
    docs = {}
    for backend in ("fast", "lvis"):
        cmd = [sys.executable, "-m", "simcal", "evaluate", "--gt", str(work / "val.json"),
               "--results", str(work / "results.json"), "--train-ann", str(work / "train.json"),
               "--iou-type", args.iou_type, "--backend", backend, "--out", str(work / f"metrics_{backend}.json")]
        dt, rss, rc = run_child(cmd, work / f"log_{backend}.txt")
        if rc != 0:
            print((work / f"log_{backend}.txt").read_text(), file=sys.stderr)
            print(json.dumps({**out, "error": f"{backend} backend exited {rc}", "workdir": str(work)}))
            return 1
        out[f"{backend}_s"] = round(dt, 2)
        out[f"{backend}_peak_rss_mb"] = round(rss, 1)
        docs[backend] = json.loads((work / f"metrics_{backend}.json").read_text())
    out["ratio"] = round(out["lvis_s"] / out["fast_s"], 2)
    diffs = [
        abs(docs["fast"][t][k] - docs["lvis"][t][k]) for t in docs["fast"] if t != "config" for k in docs["fast"][t]
    ]
    out["max_metric_diff"] = max(diffs)
    out["metrics_compared"] = len(diffs)
    out["AP_fast"] = {t: round(docs["fast"][t]["AP"], 4) for t in docs["fast"] if t != "config"}
    out["rss_ratio"] = round(out["fast_peak_rss_mb"] / out["lvis_peak_rss_mb"], 3)
    out["targets"] = {**TARGETS, "holds": {"speedup": out["ratio"] >= TARGETS["speedup"],
                                           "rss_ratio": out["rss_ratio"] <= TARGETS["rss_ratio"],
                                           "max_metric_diff": out["max_metric_diff"] <= TARGETS["max_metric_diff"]}}
    out["workdir"] = str(work) if args.workdir else None
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
