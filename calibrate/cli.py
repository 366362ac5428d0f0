"""``simcal calibrate``: retrain the classification head from a feature cache (flags; work in calibrate.py)."""

from __future__ import annotations

import argparse

from simcal.core.checks import FRACTION, NONNEG, POSITIVE, POSITIVE_INT, arg, arg_list
from simcal.core.cli_args import add_amp_arg, add_dataset_args, add_device_arg, add_seed_arg, describe
from simcal.core.names import HEADS, LOSSES, PRELOAD, SAMPLERS


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
        "HEAD.pth.log.jsonl, HEAD.pth.manifest.json (written last: configuration, cache, speed, val "
        "accuracies); with --sample-only --stats OUT.json only the sampler statistics; with --sweep "
        "GRID.json a folder with one head per configuration and results.md. A head already trained with "
        "the same configuration on the same cache is reused.",
    )
    p.add_argument(
        "--cache", metavar="CACHE", help="feature cache of the train split (required unless --source online)"
    )
    p.add_argument(
        "--head",
        choices=tuple(HEADS),
        default="3fc_ft",
        help="head architecture to train (default 3fc_ft). " + describe(HEADS),
    )
    p.add_argument(
        "--sampler",
        choices=tuple(SAMPLERS),
        default="bilevel",
        help="batch sampler (default bilevel). " + describe(SAMPLERS),
    )
    p.add_argument(
        "--loss", choices=tuple(LOSSES), default="ce", help="classification loss (default ce). " + describe(LOSSES)
    )
    p.add_argument("--steps", type=arg(POSITIVE_INT), default=1000, help="training steps (default 1000)")
    p.add_argument(
        "--out", metavar="HEAD.pth | DIR", help="head checkpoint (a folder with --sweep); not used with --sample-only"
    )
    p.add_argument("--classes-per-batch", type=arg(POSITIVE_INT), default=16,
                   help="n classes per bi-level batch (default 16)")
    p.add_argument("--images-per-class", type=arg(POSITIVE_INT), default=1, help="images per drawn class (default 1)")
    p.add_argument("--bg-ratio", type=arg(NONNEG), default=1.0, help="background rows per foreground row (default 1)")
    p.add_argument("--batch-rows", type=arg(POSITIVE_INT), default=256,
                   help="rows per batch of the random sampler (default 256)")
    p.add_argument("--lr", type=arg(POSITIVE), default=0.01, help="learning rate (default 0.01)")
    p.add_argument("--lr-steps", type=arg_list(FRACTION), default=[0.75, 0.92],
                   help="fractions of --steps where lr drops x0.1 (default 0.75,0.92)")
    add_seed_arg(p, "the sampler and the head's initialisation")
    add_device_arg(p)
    add_amp_arg(
        p,
        "off",
        "the head's matmuls (bfloat16 autocast; weights and loss stay fp32) and the online "
        "detector forward; off keeps fp32, as the released code",
    )
    p.add_argument(
        "--preload",
        choices=tuple(PRELOAD),
        default="auto",
        help="none: read each batch's rows from the store (a zarr cache or an h5 export "
        "through memory maps of its files); ram / gpu: copy them there once; "
        "auto (default): ram when they take at most 40%% of memory and 8 GiB, else none",
    )
    p.add_argument("--sample-only", action="store_true", help="draw the batches, train nothing; needs --stats")
    p.add_argument("--stats", metavar="OUT.json", help="with --sample-only: write sampler statistics here")
    p.add_argument(
        "--sweep",
        metavar="GRID.json",
        help='run every combination of {"head": [...], "sampler": [...], "loss": [...], "steps": '
        '[...], "seed": [...]} loading the cache once (or a list of such grids: their union, in order; a key '
        "left out takes the command-line value); --out is then a folder. Under torchrun the heads are split "
        "across the processes (each group on one rank; rank 0 writes the table)",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="with --sweep: train the heads one after another (the reference path); by default the heads that "
        "share a batch stream (sampler, seed, batch settings) train together, one read of each batch for all",
    )
    p.add_argument(
        "--eval-cache",
        metavar="VAL_CACHE",
        help="score each head by proposal classification accuracy per bin on a val cache "
        "(printed, and written to HEAD.pth.eval.json)",
    )
    p.add_argument(
        "--source",
        choices=("cache", "online"),
        default="cache",
        help="cache (default), or online: a frozen detector forward every step (the reference)",
    )
    p.add_argument("--checkpoint", metavar="CKPT", help="detector checkpoint (for --source online)")
    add_dataset_args(p, "train", "training images for --source online")

    def run(args: argparse.Namespace) -> int:
        from simcal.calibrate.calibrate import main

        return main(args)

    p.set_defaults(func=run)
    _run_convert_with_head_converter(sub)


def _run_convert_with_head_converter(sub) -> None:
    """'simcal convert' (detector/cli.py) with its --head: the release's head becomes a head checkpoint, this
    stage's format, which the detector stage may not import; so the command runs from here, handing
    detector.convert.main the converter (calibrate/import_head.py)."""
    convert = sub.choices.get("convert")
    if convert is None:
        return

    def run(args: argparse.Namespace) -> int:
        from simcal.calibrate.import_head import convert_head
        from simcal.detector.convert import main

        return main(args, convert_head=convert_head)

    convert.set_defaults(func=run)
