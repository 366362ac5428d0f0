"""``simcal infer``: dual-head inference (flags; work in infer.py)."""

from __future__ import annotations

import argparse

from simcal.core.checks import NONNEG, POSITIVE_INT, arg
from simcal.core.cli_args import add_dataset_args, add_device_arg, describe
from simcal.core.names import MODES, POSTHOC


def add_parser(sub) -> None:
    p = sub.add_parser(
        "infer",
        help="run the detector with a calibrated head reattached (dual head) -> LVIS results",
        description="Reattach a calibrated head beside the detector's own classifier and write LVIS results "
        "(bbox + RLE segm, at most 300 per image). One detector forward: the head scores the same RoI "
        "features the box head sees; boxes and masks come from the frozen detector. Modes: orig (detector "
        "only), cal (calibrated head only), sel (paper Eq. 2: calibrated scores for classes with N_z <= T "
        "train instances, original otherwise, background original, no renormalisation), avg (mean of both "
        "heads' probabilities). Post-hoc baselines without training: norcal, logit_adjust, tau_norm. "
        "Diagnostic: --props-gt (each proposal classified by its ground-truth box, the paper's Fig. 1c upper "
        "bound). Inputs: --checkpoint CKPT, --head-ckpt HEAD.pth, --data DIR --split val (or --ann/--images). "
        "Output: RESULTS.json and RESULTS.json.manifest.json (written last: variant, detector, data, "
        "resolved arguments); with --sweep VARIANTS.json, DIR/NAME/results.json per variant from one "
        "backbone pass. Results already made for the same variant, detector and data are reused. "
        "torchrun shards images; the "
        "merged output is identical.",
    )
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="detector checkpoint")
    p.add_argument("--head-ckpt", nargs="*", metavar="HEAD.pth",
                   help="calibrated head from 'simcal calibrate'; a cascade detector takes one per box stage, in "
                   "order, 'orig' for a stage that keeps its own classifier (e.g. orig orig stage2.pth)")
    p.add_argument("--mode", choices=tuple(MODES), default="sel", help="(default sel) " + describe(MODES))
    p.add_argument(
        "--T",
        type=arg(NONNEG),
        default=300,
        help="sel only: classes with N_z <= T train instances use "
        "the calibrated head (paper Eq. 2; default 300); avg mixes every class and ignores T",
    )
    add_dataset_args(p, "val")
    p.add_argument("--out", required=True, metavar="RESULTS.json | DIR", help="results file (a folder with --sweep)")
    p.add_argument(
        "--max-dets",
        type=arg(POSITIVE_INT),
        default=300,
        metavar="N",
        help="detections kept per image after NMS (default 300, the LVIS protocol)",
    )
    p.add_argument(
        "--sweep",
        metavar="VARIANTS.json",
        help='score several variants in one pass: a JSON list of {"name": ..., and any of "mode", '
        '"head_ckpt", "T", "posthoc", "gamma", "props_gt", "max_dets", "stage_heads" (a cascade: one head '
        'file or null per stage)}; --out is then a folder',
    )
    p.add_argument("--posthoc", choices=tuple(POSTHOC), default="none", help="(default none) " + describe(POSTHOC))
    p.add_argument("--gamma", type=arg(NONNEG), default=1.0,
                   help="norcal / logit_adjust gamma, tau_norm tau (default 1)")
    p.add_argument(
        "--props-gt",
        action="store_true",
        help="diagnostic upper bound: a proposal with IoU >= 0.5 to a ground-truth box takes that "
        "box's class, scored by the detector's foreground confidence 1 - p_bg",
    )
    p.add_argument("--batch-size", type=arg(POSITIVE_INT), default=8, help="images per detector forward (default 8)")
    add_device_arg(p)

    def run(args: argparse.Namespace) -> int:
        from simcal.infer.infer import main

        return main(args)

    p.set_defaults(func=run)
