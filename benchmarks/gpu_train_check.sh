#!/usr/bin/env bash
# GPU check for `simcal train`: AMP training of r50_fpn and tiny on CUDA.
# Usage on a CUDA machine with torch/torchvision (and pycocotools) installed, from the repo root:
#   bash benchmarks/gpu_train_check.sh OUTDIR [R50_ITERS] [TINY_ITERS]
# Prints per-run seconds/iteration, iterations/s and peak GPU memory (from the JSONL log).
set -euo pipefail
out=${1:?OUTDIR}; r50_iters=${2:-300}; tiny_iters=${3:-300}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -m simcal data synth --out "$out/synth" --preset quick --no-stats
summ() {  # steady-state speed: skip the first 20% of the logged iterations (warm-up, cudnn autotune)
  python3 - "$1" "$2" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
steady = recs[len(recs) // 5:]
s = sum(r["s_per_iter"] for r in steady) / len(steady)
print(json.dumps({"run": sys.argv[2], "iters": recs[-1]["iter"], "s_per_iter": round(s, 4),
                  "it_per_s": round(1 / s, 2), "max_mem_gb": round(max(r.get("max_mem_gb", 0) for r in recs), 2),
                  "final_loss": round(recs[-1]["loss"], 3)}))
PY
}
# r50_fpn at its default LVIS resolution (images upscaled to 800 px), batch 8, AMP.
python3 -m simcal train --data "$out/synth" --arch r50_fpn --iters "$r50_iters" --batch-size 8 --lr 0.01 \
  --amp on --device cuda --log-every 10 --checkpoint-every 100000 --out "$out/r50.pth"
summ "$out/r50.pth.log.jsonl" r50_fpn_amp_b8_800px
python3 -m simcal train --data "$out/synth" --arch r50_fpn --class-agnostic --iters 100 --batch-size 8 --lr 0.01 \
  --amp on --device cuda --log-every 10 --checkpoint-every 100000 --out "$out/r50ag.pth"
summ "$out/r50ag.pth.log.jsonl" r50_fpn_agnostic_amp_b8_800px
python3 -m simcal train --data "$out/synth" --arch tiny --iters "$tiny_iters" --batch-size 16 \
  --amp on --device cuda --log-every 10 --checkpoint-every 100000 --out "$out/tiny.pth"
summ "$out/tiny.pth.log.jsonl" tiny_amp_b16_128px
