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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB) and exit code of one child process."""
    with open(log, "w") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return dt, usage.ru_maxrss / 1024.0, p.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 images instead of 2,000")
    ap.add_argument("--images", type=int, help="number of val images (default 2000, quick 300)")
    ap.add_argument("--categories", type=int, default=1230)
    ap.add_argument("--dets", type=int, default=100, help="mean detections per image (default 100)")
    ap.add_argument("--iou-type", choices=("bbox", "segm", "both"), default="both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="keep the generated files and outputs here (default: a temp dir)")
    args = ap.parse_args()
    n_img = args.images or (300 if args.quick else 2000)

    from simcal.evaluate.synthetic_cases import CaseSpec, make_case

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="simcal-eval-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    spec = CaseSpec(num_images=n_img, num_categories=args.categories,
                    dets_per_image=(max(1, int(args.dets * 0.8)), int(args.dets * 1.2)),
                    gt_per_image=(1, 12), image_size=(160, 480), absent_fraction=0.3, neg_per_image=(0, 30))
    gt, train, res = make_case(spec, seed=args.seed)
    for name, doc in (("val.json", gt), ("train.json", train), ("results.json", res)):
        (work / name).write_text(json.dumps(doc))
    gen_s = time.perf_counter() - t0
    case = {"images": n_img, "categories": args.categories, "val_instances": len(gt["annotations"]),
            "detections": len(res), "train_instances": len(train["annotations"]), "masks": True,
            "results_mb": round((work / "results.json").stat().st_size / 2**20, 1), "generate_s": round(gen_s, 1)}
    del gt, train, res

    out: dict = {"case": case, "iou_type": args.iou_type, "max_dets": 300}
    docs = {}
    for backend in ("fast", "lvis"):
        cmd = [sys.executable, "-m", "simcal", "evaluate", "--gt", str(work / "val.json"),
               "--results", str(work / "results.json"), "--train-ann", str(work / "train.json"),
               "--iou-type", args.iou_type, "--backend", backend, "--out", str(work / f"metrics_{backend}.json")]
        dt, rss, rc = _run(cmd, work / f"log_{backend}.txt")
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
    out["workdir"] = str(work)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
