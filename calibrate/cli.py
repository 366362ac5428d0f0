"""``simcal calibrate``: retrain the classification head from a feature cache (flags; work in calibrate.py)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="retrain the classification head from a feature cache (bi-level sampling)",
        description="Retrain a classification head on class-balanced batches drawn straight from a feature "
        "cache (SimCal's bi-level sampling by default: n classes uniformly with replacement -> one image "
        "per class -> that class's foreground rows -> the batch's background rows subsampled to "
        "--bg-ratio x foreground). Plain SGD (lr 0.01, no momentum, x0.1 steps late). "
        "Inputs: --cache CACHE (zarr or .h5 from 'simcal extract'). Outputs: HEAD.pth (weights_only "
        "loadable: head, state_dict, kwargs, cache and detector fingerprints, sampler/loss config, steps), "
        "HEAD.pth.log.jsonl, HEAD.pth.config.json; with --sample-only --stats OUT.json only the sampler "
        "statistics; with --sweep GRID.json a folder with one head per configuration and results.md.",
    )
    p.add_argument("--cache", metavar="CACHE", help="feature cache of the train split (required unless --source online)")
    p.add_argument("--head", choices=("linear", "2fc_rand", "3fc_rand", "3fc_ft", "2fc_ncm"), default="3fc_ft",
                   help="head to train (default 3fc_ft: initialised from the detector's fc6/fc7/cls_score)")
    p.add_argument("--sampler", choices=("bilevel", "random", "class_balanced", "repeat_factor"),
                   default="bilevel", help="batch sampler (default bilevel)")
    p.add_argument("--loss", choices=("ce", "reweight", "focal", "margin"), default="ce")
    p.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    p.add_argument("--out", required=True, metavar="HEAD.pth | DIR", help="head checkpoint (a folder with --sweep)")
    p.add_argument("--classes-per-batch", type=int, default=16, help="n classes per bi-level batch (default 16)")
    p.add_argument("--images-per-class", type=int, default=1, help="images per drawn class (default 1)")
    p.add_argument("--bg-ratio", type=float, default=1.0, help="background rows per foreground row (default 1)")
    p.add_argument("--batch-rows", type=int, default=256, help="rows per batch of the random sampler (default 256)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--lr-steps", default="0.75,0.92", help="fractions of --steps where lr drops x0.1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast for the head's matmuls (weights and loss stay fp32) and for the online "
                   "detector forward: 2-3x faster steps on GPUs and AVX512-BF16 CPUs; off by default (fp32, as "
                   "the released code)")
    p.add_argument("--preload", choices=("auto", "none", "ram", "gpu"), default="auto",
                   help="none: read each batch's rows from the store (a zarr cache or an h5 export "
                   "through memory maps of its files); ram / gpu: copy them there once; "
                   "auto (default): ram when they take at most 40%% of memory and 8 GiB, else none")
    p.add_argument("--sample-only", action="store_true", help="draw the batches, train nothing; needs --stats")
    p.add_argument("--stats", metavar="OUT.json", help="with --sample-only: write sampler statistics here")
    p.add_argument("--sweep", metavar="GRID.json",
                   help='run every combination of {"head": [...], "sampler": [...], "loss": [...], "steps": '
                   '[...], "seed": [...]} loading the cache once (or a list of such grids: their union, in order; a key '
                   'left out takes the command-line value); --out is then a folder')
    p.add_argument("--eval-cache", metavar="VAL_CACHE",
                   help="score each head by proposal classification accuracy per bin on a val cache "
                   "(printed, and written to HEAD.pth.eval.json)")
    p.add_argument("--source", choices=("cache", "online"), default="cache",
                   help="cache (default), or online: a frozen detector forward every step (the reference)")
    p.add_argument("--checkpoint", metavar="CKPT", help="detector checkpoint (for --source online)")
    p.add_argument("--data", metavar="DIR", help="dataset folder (for --source online)")

    def run(args: argparse.Namespace) -> int:
        from simcal.calibrate.calibrate import main

        return main(args)

    p.set_defaults(func=run)
