"""Extraction cost, measured in one run on this machine.

    python benchmarks/extract_overhead.py --checkpoint runs/demo/baseline_tiny.pth --data runs/demo/data
    python benchmarks/extract_overhead.py ... --quick          # fewer images

Prints, then a last line of JSON:
- extraction (``simcal extract`` as a user runs it, consolidation included) vs plain
  detector inference (``model(images)`` in eval mode: RPN, box head, NMS, masks) on the
  same images, images/s and their ratio (overhead = extract / inference - 1);
- peak RSS of the extraction process for N and 4N images (should not grow with size);
- disk bytes per row, and the estimate for LVIS with R50-FPN (D = 12544) at the
  default K (8 fg rows per GT) and M (32 bg rows per image).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def extract_run(ckpt: str, data: str, split: str, n: int, work: Path, extra: list[str]) -> dict:
    """simcal extract on the first n images, in a fresh process (so its peak RSS is its own)."""
    import json as _json

    ann = _json.loads((Path(data) / "annotations" / f"{split}.json").read_text())
    keep = {img["id"] for img in ann["images"][:n]}
    sub = {**ann, "images": ann["images"][:n], "annotations": [a for a in ann["annotations"] if a["image_id"] in keep]}
    ann_path = work / f"{split}_{n}.json"
    ann_path.write_text(_json.dumps(sub))
    out = work / f"cache_{n}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    code = ("import resource, sys; from simcal.cli import main; rc = main(sys.argv[1:]); "
            "print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, file=sys.stderr); "
            "sys.exit(rc)")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, "extract", "--checkpoint", ckpt, "--ann", str(ann_path),
                        "--images", str(Path(data) / "images" / split), "--out", str(out), *extra],
                       capture_output=True, text=True)
    secs = time.perf_counter() - t
    if r.returncode:
        sys.exit(r.stderr)
    peak = float(r.stderr.rsplit("PEAK_RSS_MB", 1)[1].split()[0])
    from simcal.extract.schema import Cache

    c = Cache(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"images": n, "seconds": secs, "images_per_s": n / secs, "rows": c.num_rows, "bytes": size,
            "bytes_per_row": size / c.num_rows, "peak_rss_mb": peak, "dim": c.dim}


def inference_run(ckpt: str, data: str, split: str, n: int, batch: int) -> dict:
    import torch
    from torch.utils.data import DataLoader, Subset

    from simcal.data.annotations import load_annotations
    from simcal.data.detection_dataset import DetectionDataset, collate
    from simcal.detector.checkpoint import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    ann = load_annotations(Path(data) / "annotations" / f"{split}.json")
    ds = Subset(DetectionDataset(ann, Path(data) / "images" / split, with_masks=False), range(n))
    t = time.perf_counter()
    with torch.no_grad():
        for images, _ in DataLoader(ds, batch_size=batch, collate_fn=collate):
            model(images)
    secs = time.perf_counter() - t
    return {"images": n, "seconds": secs, "images_per_s": n / secs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="a folder from 'simcal data synth'")
    p.add_argument("--split", default="train")
    p.add_argument("--images", type=int, default=500, help="N (the memory check also runs 4N)")
    p.add_argument("--quick", action="store_true", help="N = 100")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    n = 100 if args.quick else args.images
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        extra = ["--batch-size", str(args.batch_size)]
        inf = inference_run(args.checkpoint, args.data, args.split, n, args.batch_size)
        small = extract_run(args.checkpoint, args.data, args.split, n, work, extra)
        large = extract_run(args.checkpoint, args.data, args.split, 4 * n, work, extra)
    rows_per_image = large["rows"] / large["images"]
    per_row_r50 = 12544 * 2 + 2 + 4 + 16 + 4 + 1 + 1  # float16 features + labels, ious, boxes, index, flags
    print(f"inference: {inf['images_per_s']:.1f} img/s; extraction: {small['images_per_s']:.1f} img/s "
          f"(N={n}), {large['images_per_s']:.1f} img/s (4N)")
    print(f"peak RSS: {small['peak_rss_mb']:.0f} MB (N) vs {large['peak_rss_mb']:.0f} MB (4N); "
          f"{large['bytes_per_row']:.0f} bytes/row at D={large['dim']}; {rows_per_image:.1f} rows/image")
    print(json.dumps({
        "images": n,
        "inference_images_per_s": round(inf["images_per_s"], 2),
        "extract_images_per_s": round(small["images_per_s"], 2),
        "extract_over_inference_time": round(inf["images_per_s"] / small["images_per_s"], 3),
        "overhead": round(inf["images_per_s"] / small["images_per_s"] - 1, 3),
        "peak_rss_mb": {"N": round(small["peak_rss_mb"]), "4N": round(large["peak_rss_mb"])},
        "bytes_per_row": round(large["bytes_per_row"], 1),
        "rows_per_image": round(rows_per_image, 1),
        "r50_bytes_per_row": per_row_r50,
    }))


if __name__ == "__main__":
    main()
