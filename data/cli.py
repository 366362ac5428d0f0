"""``simcal data {stats,synth,coco-lt}``: annotations, statistics, the synthetic benchmark, COCO-LT."""

from __future__ import annotations

import argparse
import json
import sys

from simcal.core.checks import NONNEG_INT, POSITIVE, arg
from simcal.core.cli_args import describe
from simcal.core.names import BIN_EDGES, SYNTH_PRESETS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "data",
        help="dataset tools: statistics, synthetic benchmark, COCO-LT",
        description="Dataset tools. Inputs: LVIS v0.5/v1 or COCO instance json (validated on load; a bad "
        "file is reported in one sentence with exit code 2). Outputs: statistics tables/JSON/plots, the "
        "synthetic benchmark folder, a COCO-LT json.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="<data command>")
    dsub.required = True

    s = dsub.add_parser(
        "stats",
        help="per-category counts, LVIS frequency and the paper's instance bins",
        description="Per-category instance and image counts of an LVIS/COCO annotation file, the LVIS "
        "frequency split (r <= 10 images < c <= 100 < f) and the paper's instance-count bins "
        "(lvis: <10, 10-100, 100-1000, >=1000; coco-lt: <20, 20-400, 400-8000, >=8000). "
        "Prints markdown tables, or JSON with --json.",
    )
    s.add_argument("--ann", required=True, metavar="FILE", help="LVIS v0.5/v1 or COCO instance json")
    s.add_argument("--bins", choices=tuple(BIN_EDGES), default="lvis", help="instance bin edges (default lvis)")
    s.add_argument("--json", action="store_true", help="print the statistics as one JSON document")
    s.add_argument("--plot", metavar="OUT.png", help="also write sorted per-class counts on a log axis")
    s.set_defaults(func=run_stats)

    y = dsub.add_parser(
        "synth",
        help="generate the synthetic long-tail benchmark (LVIS format)",
        description="Generate the synthetic long-tail benchmark: DIR/annotations/{train,val}.json (LVIS "
        "format: RLE masks, neg_category_ids, not_exhaustive_category_ids, category frequency; info "
        "records max_dets_per_image) and DIR/images/{train,val}/*.png. Same seed, byte-identical "
        "files. An existing benchmark with the same preset and seed is reused.",
    )
    y.add_argument("--out", required=True, metavar="DIR", help="output folder (created atomically)")
    y.add_argument("--preset", choices=tuple(SYNTH_PRESETS), default="default",
                   help=f"benchmark size (default: default). {describe(SYNTH_PRESETS)}")
    y.add_argument("--seed", type=arg(NONNEG_INT), default=0, help="random seed (default 0)")
    y.add_argument("--overwrite", action="store_true", help="replace a different benchmark at --out")
    y.add_argument("--no-stats", action="store_true", help="do not print train statistics at the end")
    y.set_defaults(func=run_synth)

    c = dsub.add_parser(
        "coco-lt",
        help="sample a long-tailed subset of COCO (the paper's COCO-LT)",
        description="Sample COCO-LT from a COCO instance file by keeping whole images so that per-class "
        "instance counts follow an exponential over classes sorted by frequency (see "
        "simcal.data.coco_lt). Writes the subset json and prints the achieved bins.",
    )
    c.add_argument("--coco", required=True, metavar="FILE", help="COCO instances_train2017.json")
    c.add_argument("--out", required=True, metavar="FILE", help="output json (written atomically)")
    c.add_argument("--seed", type=arg(NONNEG_INT), default=0, help="random seed (default 0)")
    c.add_argument("--keep-head", type=arg(NONNEG_INT), default=20,
                   help="most frequent classes kept whole (default 20)")
    c.add_argument("--n-high", type=arg(POSITIVE), default=7900,
                   help="target of the first decayed class (default 7900)")
    c.add_argument("--n-low", type=arg(POSITIVE), default=15, help="target of the rarest class (default 15)")
    c.set_defaults(func=run_coco_lt)


def run_stats(args: argparse.Namespace) -> int:
    from simcal.data.annotations import load_annotations
    from simcal.data.statistics import dataset_summary, format_summary

    summary = dataset_summary(load_annotations(args.ann), args.bins)
    if args.plot:
        from simcal.data.plots import plot_instance_distribution

        plot_instance_distribution(summary, args.plot)
    if args.json:
        json.dump(summary, sys.stdout)
        print()
    else:
        print(format_summary(summary))
        if args.plot:
            print(f"\nplot: {args.plot}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    import time

    from simcal.data.annotations import load_annotations
    from simcal.data.statistics import dataset_summary, format_summary
    from simcal.data.synthetic import synthesize

    t0 = time.perf_counter()
    out, created = synthesize(args.out, args.preset, args.seed, overwrite=args.overwrite)
    what = f"wrote {out} in {time.perf_counter() - t0:.1f} s" if created else f"{out} already holds this benchmark"
    print(f"{what} (preset {args.preset}, seed {args.seed})")
    if not args.no_stats:
        print(format_summary(dataset_summary(load_annotations(out / "annotations" / "train.json"))))
    return 0


def run_coco_lt(args: argparse.Namespace) -> int:
    from collections import Counter

    from simcal.core.atomic import write_json
    from simcal.data.annotations import load_annotations
    from simcal.data.coco_lt import sample_coco_lt
    from simcal.data.statistics import instance_bin

    ann = load_annotations(args.coco)
    doc, report = sample_coco_lt(ann, args.seed, args.keep_head, args.n_high, args.n_low)
    write_json(args.out, doc, separators=(",", ":"))
    bins = Counter(instance_bin(c["sampled"], "coco-lt") for c in report["categories"])
    print(f"wrote {args.out}: {report['num_images']} images, {report['num_instances']} instances, "
          f"{len(report['categories'])} classes; COCO-LT bins <20/20-400/400-8000/>=8000: "
          f"{bins[1]}/{bins[2]}/{bins[3]}/{bins[4]}")
    return 0
