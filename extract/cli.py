"""``simcal extract`` and ``simcal cache {info,verify,export}`` (flags only; work in extract.py, cache_tools.py)."""

from __future__ import annotations

import argparse

from simcal.core.checks import FRACTION_POSITIVE, NONNEG_INT, POSITIVE_INT, arg
from simcal.core.cli_args import add_dataset_args, add_device_arg, add_seed_arg
from simcal.core.names import BIN_EDGES, FEATURE_DTYPES


def add_parser(sub) -> None:
    p = sub.add_parser(
        "extract",
        help="dump per-proposal RoI features of a frozen detector to a zarr cache",
        description="Run a frozen detector once over a dataset and store, per selected proposal, the "
        "RoIAlign feature (the box head's input), label, IoU and box in a sharded zarr v3 store indexed "
        "by class and image (schema: simcal.extract.schema). Per image: RPN proposals + GT boxes, "
        "labelled by max IoU with GT (fg >= --fg-iou); up to --fg-per-gt rows per GT (the GT box "
        "always) and up to --bg-per-image background rows, drawn with a seeded generator. "
        "Inputs: --checkpoint CKPT and --data DIR --split S (or --ann FILE --images DIR). Output: "
        "CACHE.zarr, complete or absent, and CACHE.zarr.manifest.json (written last: what it was made "
        "from); OUT.parts/ holds finished parts while running. Re-running the same command resumes; "
        "'torchrun --nproc_per_node N -m simcal extract ...' splits the "
        "work with an identical result.",
    )
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="detector checkpoint from 'simcal train'")
    add_dataset_args(p, "train")
    p.add_argument("--out", required=True, metavar="CACHE.zarr", help="output cache folder")
    p.add_argument("--fg-per-gt", type=arg(POSITIVE_INT), default=8,
                   help="foreground rows per GT, the GT box included (default 8)")
    p.add_argument(
        "--bg-per-image",
        type=arg(NONNEG_INT),
        default=32,
        help="background rows per image and view (default 32: with 8 fg rows per GT, a 16-class "
        "bi-level batch reaches fg:bg = 1:1 from its own images' background)",
    )
    p.add_argument("--fg-iou", type=arg(FRACTION_POSITIVE), default=None,
                   help="foreground IoU threshold (default 0.5; with --stage, that stage's: 0.5, 0.6, 0.7)")
    p.add_argument("--stage", type=arg(NONNEG_INT), default=None,
                   help="cascade detectors (tiny_cascade, r50_cascade), and only those: the box stage whose rows "
                   "to store (0, 1 or 2). Its RoIs are the RPN proposals regressed by the stages before it, "
                   "its tap is its box head's input, and the cache carries its classifier for 3fc_ft; one "
                   "cache per stage")
    p.add_argument("--flip", action="store_true", help="also store a horizontally flipped view of every image")
    p.add_argument(
        "--bins",
        choices=tuple(BIN_EDGES),
        default="lvis",
        help="instance-count bin scheme recorded in the cache for per-bin reports (default lvis)",
    )
    p.add_argument(
        "--dtype",
        choices=FEATURE_DTYPES,
        default="float16",
        help="feature storage: float16, or int8 with a per-row scale (half the disk)",
    )
    p.add_argument("--batch-size", type=arg(POSITIVE_INT), default=8, help="images per detector forward (default 8)")
    p.add_argument(
        "--images-per-part",
        type=arg(POSITIVE_INT),
        default=None,
        help="images per resumable part, whose rows are held in memory until written (default: "
        "about 256 MiB of features, e.g. 428 images for tiny, 107 for r50_fpn)",
    )
    add_seed_arg(p, "the row draws")
    p.add_argument("--workers", type=arg(NONNEG_INT), default=0, help="image-loading processes (default 0)")
    add_device_arg(p)
    p.add_argument("--overwrite", action="store_true", help="replace a cache or unfinished parts with other parameters")

    def run(args: argparse.Namespace) -> int:
        from simcal.extract.extract import main

        return main(args)

    p.set_defaults(func=run)

    c = sub.add_parser(
        "cache",
        help="inspect, verify or export a feature cache",
        description="Tools over a feature cache. Input: CACHE (zarr folder or .h5 export). "
        "info: rows, fg/bg, per-bin row and image counts, size on disk, fingerprints, completeness. "
        "verify: every file matches the crc32c recorded at extraction, values in range, index consistent "
        "with labels, complete (exit 2 if not). "
        "export: write a single-file h5py copy with the same schema (output: OUT.h5).",
    )
    csub = c.add_subparsers(dest="cache_command", metavar="<cache command>")
    csub.required = True
    i = csub.add_parser(
        "info",
        help="summary of a cache",
        description="Rows, fg/bg, per-bin counts, size, "
        "fingerprints and completeness of a cache (markdown, or JSON with --json).",
    )
    i.add_argument("cache", metavar="CACHE")
    i.add_argument("--json", action="store_true")
    v = csub.add_parser(
        "verify",
        help="check a cache",
        description="Check that a cache is complete, every file matches the size and crc32c recorded at "
        "extraction (this reads the whole cache), its index agrees with its labels and images, and every "
        "value is in range. Exit 0 if so, else one sentence naming the problems and exit 2.",
    )
    v.add_argument("cache", metavar="CACHE")
    e = csub.add_parser(
        "export",
        help="write an h5py copy",
        description="Copy a complete zarr cache into one "
        "HDF5 file with the same array names and attributes (the calibration reader accepts "
        "both). Written under a temporary name and renamed.",
    )
    e.add_argument("--format", choices=("h5",), default="h5")
    e.add_argument("cache", metavar="CACHE")
    e.add_argument("out", metavar="OUT.h5")

    def run_cache(args: argparse.Namespace) -> int:
        from simcal.extract import cache_tools

        return {"info": cache_tools.run_info, "verify": cache_tools.run_verify, "export": cache_tools.run_export}[
            args.cache_command
        ](args)

    c.set_defaults(func=run_cache)
