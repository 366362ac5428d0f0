#!/usr/bin/env bash
# GPU check for extraction and calibration with the tiny and r50_fpn detectors.
# Usage on a CUDA machine with torch/torchvision, pycocotools and zarr installed, outside the repo root:
#   bash /path/to/benchmarks/gpu_pipeline_check.sh OUTDIR
# Prints extraction images/s, cache-vs-online calibration steps/s (benchmarks/calibrate_speed.py).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?OUTDIR}
mkdir -p "$out"
python3 -m simcal data synth --out "$out/synth" --preset quick --no-stats
for arch in tiny r50_fpn; do
  python3 -m simcal train --data "$out/synth" --arch $arch --iters 150 --batch-size 8 --lr 0.01 --amp on \
    --device cuda --log-every 50 --checkpoint-every 100000 --out "$out/$arch.pth"
  t0=$(date +%s.%N)
  python3 -m simcal extract --checkpoint "$out/$arch.pth" --data "$out/synth" --split train \
    --out "$out/$arch.zarr" --batch-size 16 --device cuda --workers 4
  t1=$(date +%s.%N)
  python3 - "$out/$arch.zarr" "$t0" "$t1" "$arch" <<'PY'
import json, sys
from simcal.extract.schema import Cache
c = Cache(sys.argv[1]); secs = float(sys.argv[3]) - float(sys.argv[2]); n = c.attrs["counts"]["images"]
print(json.dumps({"extract": sys.argv[4], "images": n, "rows": c.num_rows, "seconds_incl_startup": round(secs, 1),
                  "images_per_s": round(n / secs, 1), "dim": c.dim}))
PY
  python3 "$here/calibrate_speed.py" --checkpoint "$out/$arch.pth" --data "$out/synth" --cache "$out/$arch.zarr" \
    --steps 300 --device cuda
done
