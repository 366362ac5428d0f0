"""``simcal evaluate``: LVIS-protocol metrics with the paper's bins."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simcal.core.checks import POSITIVE_INT, arg
from simcal.core.names import BIN_EDGES


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="LVIS AP, APr/c/f and the paper's AP1-AP4 bins; compare metric files",
        description=(
            "Evaluate LVIS results json against ground truth with the LVIS protocol\n"
            "(federated: neg_category_ids / not_exhaustive_category_ids; at most N detections\n"
            "per image; AP over IoU .50:.95; APr/c/f from the ground truth's category\n"
            "frequency) plus the paper's AP1-AP4 from each class's training instance count\n"
            "(lvis bins: <10, 10-100, 100-1000, >=1000; coco-lt: <20, 20-400, 400-8000, >=8000).\n\n"
            "Inputs: --gt VAL.json --results RESULTS.json --train-ann TRAIN.json.\n"
            "Output: a markdown table in percent (AP1 AP2 AP3 AP4 APr APc APf AP) on stdout;\n"
            "with --out, METRICS.json = {\"bbox\": {...}, \"segm\": {...}, \"config\": {...}}\n"
            "(fractions, -1 for an empty group) and METRICS.json.manifest.json (what it was\n"
            "made from: a re-run on the same files reuses it); with --per-class, per-category\n"
            "AP as CSV.\n"
            "Bad input: one sentence on stderr, exit code 2.\n\n"
            "Compare mode: simcal evaluate --compare A.json B.json ... prints metric files\n"
            "side by side (the paper's Table-3 layout). See docs/evaluate.md."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gt", metavar="VAL.json", help="ground-truth annotations (LVIS or COCO format)")
    p.add_argument("--results", metavar="RESULTS.json", help="detections: a JSON list of LVIS result records")
    p.add_argument("--train-ann", metavar="TRAIN.json", help="training annotations (instance counts -> AP1-AP4 bins)")
    p.add_argument("--iou-type", choices=("bbox", "segm", "both"),
                   help="box AP, mask AP, or both (default: both when every result has a segmentation, else bbox)")
    p.add_argument("--bins", choices=tuple(BIN_EDGES), default="lvis", help="instance-count bin edges (default lvis)")
    p.add_argument("--backend", choices=("fast", "lvis"), default="fast",
                   help="fast: faster-coco-eval (default); lvis: the lvis package's LVISEval (the reference)")
    p.add_argument("--max-dets", type=arg(POSITIVE_INT), metavar="N",
                   help="detections kept per image, highest scores (default: the ground truth's "
                   "info.max_dets_per_image if present, else 300 as LVIS)")
    p.add_argument("--out", metavar="METRICS.json", help="write the metrics (and the resolved config) here")
    p.add_argument("--per-class", metavar="OUT.csv", help="write per-category AP with train counts, frequency and bin")
    p.add_argument(
        "--compare", nargs="+", metavar="METRICS.json", help="print these metric files side by side and exit"
    )
    p.add_argument("--labels", nargs="+", metavar="NAME", help="row names for --compare (default: file names)")
    p.set_defaults(func=run)


def _warn(msg: str) -> None:
    print(f"simcal evaluate: warning: {msg}", file=sys.stderr)


def run_compare(args: argparse.Namespace) -> int:
    from simcal.core.errors import InputError
    from simcal.evaluate.tables import compare_table, load_metrics

    stray = [f"--{n.replace('_', '-')}" for n in ("gt", "results", "train_ann", "out", "per_class") if getattr(args, n)]
    if stray:
        raise InputError(
            f"--compare prints existing metric files and takes no {', '.join(stray)}; "
            "drop them or run without --compare."
        )
    docs = [load_metrics(f) for f in args.compare]
    if args.labels is not None and len(args.labels) != len(args.compare):
        raise InputError(
            f"--labels has {len(args.labels)} names for {len(args.compare)} files; give one name per file."
        )
    labels = args.labels or [Path(f).stem for f in args.compare]
    print(compare_table(docs, labels))
    return 0


def run(args: argparse.Namespace) -> int:
    from simcal.core.errors import InputError

    if args.compare:
        return run_compare(args)
    if args.labels:
        raise InputError("--labels only names the rows of --compare; drop it or add --compare.")
    missing = [f"--{n.replace('_', '-')}" for n in ("gt", "results", "train_ann") if not getattr(args, n)]
    if missing:
        raise InputError(
            f"missing {', '.join(missing)}; run 'simcal evaluate --gt VAL.json --results RESULTS.json "
            "--train-ann TRAIN.json' (or 'simcal evaluate --compare A.json B.json')."
        )

    from simcal.core.atomic import require_output, write_json, write_text
    from simcal.core.manifest import completed, fingerprint_file, write_manifest
    from simcal.data.annotations import load_annotations
    from simcal.evaluate.evaluator import default_iou_types, evaluate_results
    from simcal.evaluate.gcpause import gc_paused
    from simcal.evaluate.inputs import prepare_results, read_results, resolve_max_dets
    from simcal.evaluate.tables import load_metrics, metrics_table, per_class_csv

    require_output(args.out, "file", "--out", "metrics.json")
    require_output(args.per_class, "file", "--per-class", "per_class.csv")
    with gc_paused():  # millions of acyclic dicts: see simcal.evaluate.gcpause
        gt = load_annotations(args.gt)
        max_dets, source = resolve_max_dets(args.max_dets, gt)
        train = load_annotations(args.train_ann)
        results = read_results(args.results)
    if args.iou_type is None:
        iou_types = default_iou_types(results)
    else:
        iou_types = ("bbox", "segm") if args.iou_type == "both" else (args.iou_type,)
    # Printed once the inputs are known to be valid, so that a refusal is the only line on stderr.
    cap_line = (
        f"evaluation cap: {max_dets} detections per image ({source}); iou types: "
        f"{', '.join(iou_types)}; backend: {args.backend}"
    )
    identity = {"gt": gt.fingerprint, "train": train.fingerprint, "results": fingerprint_file(args.results),
                "iou_types": list(iou_types), "bins": args.bins, "backend": args.backend, "max_dets": max_dets}
    if args.out and not args.per_class and completed(args.out, "evaluate", identity):
        print(cap_line)
        print(metrics_table(load_metrics(args.out)))
        print(f"\n{args.out} already holds these metrics; nothing to do.")
        return 0
    with gc_paused():
        dets = prepare_results(results, gt, iou_types, max_dets, args.results)
    del results  # the parsed file: only the validated columns are kept
    report = evaluate_results(gt, dets, train, iou_types, args.bins, args.backend, max_dets, args.results)
    report.config["max_dets_source"] = source
    print(cap_line)
    for w in report.warnings:
        _warn(w)
    doc = report.to_json()
    print(metrics_table(doc))
    if args.out:
        write_json(args.out, doc, indent=1)
        write_manifest(args.out, "evaluate", identity)
        print(f"\nwrote {args.out}")
    if args.per_class:
        write_text(args.per_class, per_class_csv(report.per_class))
        print(f"wrote {args.per_class}")
    return 0
