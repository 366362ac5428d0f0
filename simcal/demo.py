"""``simcal demo``: the whole pipeline on the embedded synthetic benchmark.

synthesize the benchmark -> train the baseline tiny detector -> extract the train and
val feature caches -> one calibration sweep from the train cache, scored on the val
cache (the main 3fc_ft head, the other heads, step counts, the decoupled Table-4
methods) plus a short online-calibration reference -> one inference sweep on val
(baseline, calibrated, dual sel/avg, every sweep head, T values, props-gt, post-hoc
rules) -> evaluate -> ``OUT/report.md`` with the paper's Tables 3-5 and Fig. 4 (PNG),
``OUT/summary.json``.

What runs is declared in ``simcal.demo_plan``; this module executes it, one function per
step. Each step goes through the public ``simcal`` commands (in-process) and reuses its
output when it is already complete (:func:`_done`), so a re-run is cheap and an
interrupted run resumes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simcal import demo_plan
from simcal.core.cli_args import add_device_arg, add_seed_arg
from simcal.demo_plan import PRESETS, Plan, Preset


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the pipeline end to end on the synthetic benchmark",
        description="Run SimCal end to end on the embedded synthetic long-tail benchmark and write a "
        "report to --out: the paper's Tables 3, 4, 5 and Fig. 4a-c, the props-gt upper bound, post-hoc "
        "baselines, stage wall-clock and the cache-vs-online calibration speed-up. Inputs: none (the "
        "benchmark is generated, deterministic by --seed). Outputs: OUT/data (the benchmark), "
        "OUT/baseline_tiny.pth (the detector), OUT/{train,val}.zarr (feature caches), OUT/heads/ (calibration "
        "sweep: one head per configuration, results.md with proposal accuracy on the val cache), "
        "OUT/infer/NAME/{results,metrics}.json per "
        "inference variant, OUT/report.md with PNG figures, OUT/summary.json, OUT/config.json. "
        "Existing complete outputs are reused.",
    )
    sizes = "; ".join(f"{name}: {q.benchmark}, {q.train_iters} training iterations at batch {q.train_batch}, "
                      f"{q.calibration_steps} calibration steps" for name, q in PRESETS.items())
    p.add_argument("--preset", choices=tuple(PRESETS), default="default",
                   help=f"benchmark and training size (default: default). {sizes}")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default runs/demo)")
    p.add_argument("--with", dest="extras", default="", metavar="PARTS",
                   help="comma-separated parts of the paper that need more detector trainings: "
                   + "; ".join(f"{k}: {v}" for k, v in demo_plan.EXTRAS.items())
                   + " (default none; the trainings follow --preset's schedule)")
    add_seed_arg(p, "the data, training and calibration")
    add_device_arg(p)
    p.set_defaults(func=run)


def _simcal(*argv: Any) -> None:
    """Run one pipeline command in-process, as a user would from the shell."""
    from simcal.cli import main
    from simcal.core.errors import InputError

    rc = main([str(a) for a in argv])
    if rc != 0:
        raise InputError(f"'simcal {' '.join(map(str, argv))}' failed with exit code {rc}")


def _done(path: Path) -> bool:
    """Whether a step's output ``path`` is complete: its command wrote it and then, last, its manifest.

    The demo runs every command again anyway (each reuses an output made from the same inputs,
    :mod:`simcal.core.manifest`); this only decides what the timing records call reused.
    """
    from simcal.core.manifest import read_manifest

    return path.exists() and read_manifest(path) is not None


@dataclass
class _Timings:
    """``summary.json``'s wall-clock records: ``{"step", "what", "seconds", "reused"}`` per piece of work.

    Work done now is timed; work whose output is reused keeps the previous run's record for the same
    (step, what), marked reused, if there is one.
    """

    previous: list[dict[str, Any]]
    records: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, summary: Path) -> _Timings:
        from simcal.core.jsonio import read_json_or_none

        doc = read_json_or_none(summary)
        previous = doc.get("timings", []) if isinstance(doc, dict) else []
        return cls([r for r in previous if isinstance(r, dict)] if isinstance(previous, list) else [])

    def start(self, step: str, message: str) -> float:
        print(f"[demo] {step}: {message}")
        return time.perf_counter()

    def record(self, step: str, what: str, t0: float, ran: bool) -> None:
        if ran:
            self.records.append({"step": step, "what": what, "seconds": round(time.perf_counter() - t0, 1),
                                 "reused": False})
            return
        old = next((r for r in self.previous if (r.get("step"), r.get("what")) == (step, what)), None)
        if old is not None:
            self.records.append({**old, "reused": True})


def _write_config(out: Path, args: argparse.Namespace, preset: Preset) -> None:
    from simcal.core.atomic import write_json

    write_json(out / "config.json",
                      {"command": "demo", **{k: v for k, v in vars(args).items() if k != "func"},
                       "train_iters": preset.train_iters, "table2_iters": preset.table2_iters,
                       "train_batch": preset.train_batch,
                       "train_lr": preset.train_lr, "calibration_steps": preset.calibration_steps,
                       "sweep_steps": preset.sweep_steps, "online_steps": preset.online_steps,
                       "T_values": demo_plan.T_VALUES},
                      indent=2)


def _data(out: Path, args: argparse.Namespace, clock: _Timings) -> Path:
    """The synthetic benchmark and its train-distribution plot; returns the benchmark folder."""
    from simcal.data.annotations import load_annotations
    from simcal.data.plots import plot_instance_distribution
    from simcal.data.statistics import dataset_summary
    from simcal.data.synthetic import synthesize

    what = f"synthesize preset {args.preset}"
    t0 = clock.start("data", what)
    data, created = synthesize(out / "data", args.preset, args.seed)
    clock.record("data", what, t0, ran=created)
    stats = dataset_summary(load_annotations(data / "annotations" / "train.json"))
    plot_instance_distribution(stats, out / "train_instances.png")
    return data


def _train(out: Path, data: Path, args: argparse.Namespace, preset: Preset, clock: _Timings) -> Path:
    """The baseline tiny detector; returns its checkpoint."""
    ckpt = out / "baseline_tiny.pth"
    what = "baseline tiny detector"
    t0 = clock.start("train", f"{what} -> {ckpt}")
    ran = not _done(ckpt)
    _simcal("train", "--data", data, "--arch", "tiny", "--iters", preset.train_iters,
            "--batch-size", preset.train_batch, "--lr", preset.train_lr, "--seed", args.seed,
            "--out", ckpt, "--resume", "--device", args.device)
    clock.record("train", what, t0, ran)
    return ckpt


def _extras(value: str) -> tuple[str, ...]:
    """``--with``'s parts, checked against :data:`simcal.demo_plan.EXTRAS`."""
    from simcal.core.errors import input_error

    parts = tuple(dict.fromkeys(x.strip() for x in value.split(",") if x.strip()))
    unknown = [x for x in parts if x not in demo_plan.EXTRAS]
    if unknown:
        raise input_error(None, f"--with names unknown parts {unknown}", f"choose from {', '.join(demo_plan.EXTRAS)}")
    return parts


def _train_detectors(out: Path, data: Path, trainings, arch: str, table: str, preset: Preset,
                     args: argparse.Namespace, clock: _Timings) -> dict[str, Path]:
    """Extra detectors (Table 2's, Table 6's), each ``arch`` trained with its method's flags and the baseline's
    settings otherwise (``preset.table2_iters`` iterations); checkpoint by name."""
    ckpts = {}
    for m in trainings:
        ckpts[m.name] = ckpt = out / f"{m.name}_{arch}.pth"
        what = f"{table} detector: {m.label}"
        t0 = clock.start("train", f"{what} -> {ckpt}")
        ran = not _done(ckpt)
        _simcal("train", "--data", data, "--arch", arch, "--iters", preset.table2_iters, "--batch-size",
                preset.train_batch, "--lr", preset.train_lr, "--seed", args.seed, *m.train_flags, "--out", ckpt,
                "--resume", "--device", args.device)
        clock.record("train", what, t0, ran)
    return ckpts


def _table6(out: Path, data: Path, plan: Plan, args: argparse.Namespace, clock: _Timings) -> None:
    """Table 6 (``--with table6``): the cascade detectors, then per stage of the baseline cascade a train cache
    and a calibration sweep over the seeds, then its variants and the IS cascade on val -> OUT/infer/NAME/."""
    from simcal.core.atomic import write_json

    cascade, preset = plan.cascade, plan.preset
    ckpts = _train_detectors(out, data, cascade.trainings, demo_plan.CASCADE_ARCH, "Table 6", preset, args, clock)
    base = ckpts[cascade.trainings[0].name]
    for t, (cache, heads) in enumerate(zip(cascade.caches, cascade.head_dirs)):
        what = f"cascade stage {t}: train feature cache, {len(cascade.grid[0]['seed'])} heads"
        t0 = clock.start("calibrate", f"{what} -> {out / cache}, {heads}")
        ran = not _done(Path(heads) / "results.json")
        _simcal("extract", "--checkpoint", base, "--data", data, "--split", "train", "--stage", t, "--out",
                out / cache, "--device", args.device)
        Path(heads).mkdir(parents=True, exist_ok=True)
        write_json(Path(heads) / "grid.json", cascade.grid, indent=2)
        _simcal("calibrate", "--cache", out / cache, "--sweep", Path(heads) / "grid.json", "--head",
                demo_plan.MAIN_HEAD, "--steps", preset.calibration_steps, "--seed", args.seed, "--out", heads,
                "--device", args.device)
        clock.record("calibrate", what, t0, ran)
    infer_dir = out / "infer"
    variants = infer_dir / "cascade_variants.json"
    write_json(variants, cascade.variants, indent=2)
    what = f"Table 6: {len(cascade.variants)} cascade variants on val, one pass"
    t0 = clock.start("infer", what)
    ran = not all(_done(infer_dir / v["name"] / "results.json") for v in cascade.variants)
    _simcal("infer", "--checkpoint", base, "--data", data, "--split", "val", "--sweep", variants, "--out", infer_dir,
            "--device", args.device)
    clock.record("infer", what, t0, ran)
    cap = cascade.variants[0]["max_dets"]
    _infer_end_to_end(infer_dir, data, {m.name: ckpts[m.name] for m in cascade.trainings[1:]}, cap, args, clock)


def _extract(out: Path, ckpt: Path, data: Path, args: argparse.Namespace, clock: _Timings) -> None:
    """OUT/train.zarr (what calibration reads) and OUT/val.zarr (what scores the sweep before any inference)."""
    for split in ("train", "val"):
        path = out / f"{split}.zarr"
        what = demo_plan.EXTRACT_WHAT.format(split=split)
        t0 = clock.start("extract", f"{what} -> {path}")
        ran = not _done(path)
        _simcal("extract", "--checkpoint", ckpt, "--data", data, "--split", split, "--out", path,
                "--device", args.device)
        clock.record("extract", what, t0, ran)


def _calibrate(out: Path, plan: Plan, args: argparse.Namespace, clock: _Timings) -> list[dict[str, Any]]:
    """The calibration sweep from the train cache, scored on the val cache; returns its result rows."""
    from simcal.core.atomic import write_json
    from simcal.core.jsonio import read_json

    heads = out / "heads"
    heads.mkdir(parents=True, exist_ok=True)
    write_json(heads / "grid.json", plan.grid, indent=2)
    t0 = clock.start("calibrate", f"sweep of {len(plan.grid)} grids from the cache -> {heads}")
    ran = not _done(Path(plan.main_head))
    _simcal("calibrate", "--cache", out / "train.zarr", "--sweep", heads / "grid.json", "--eval-cache",
            out / "val.zarr", "--head", demo_plan.MAIN_HEAD, "--steps", plan.preset.calibration_steps,
            "--seed", args.seed, "--out", heads, "--device", args.device)
    rows = read_json(heads / "results.json")
    clock.record("calibrate", f"sweep of {len(rows)} heads from the train cache", t0, ran)
    return rows


def _calibrate_online(out: Path, data: Path, ckpt: Path, plan: Plan, args: argparse.Namespace,
                      clock: _Timings) -> dict[str, Any]:
    """A short online (detector-forward) calibration of the main head; returns its steps/s row."""
    from simcal.core.manifest import read_manifest

    online = out / "heads" / f"online_{demo_plan.MAIN_HEAD}.pth"
    n = plan.preset.online_steps
    what = f"online reference, {n} steps"
    t0 = clock.start("calibrate", f"{what} -> {online}")
    ran = not _done(online)
    _simcal("calibrate", "--source", "online", "--checkpoint", ckpt, "--data", data, "--head",
            demo_plan.MAIN_HEAD, "--steps", n, "--seed", args.seed, "--out", online, "--device", args.device)
    clock.record("calibrate", what, t0, ran)
    return read_manifest(online)["record"]["row"]


def _speed(rows: list[dict[str, Any]], online_row: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """Head-steps/s from the cache (the main head's group of the sweep, trained together) vs. one head with a
    detector forward every step."""
    main_row = next(r for r in rows if r["head_file"] == plan.main_head)
    cache = main_row.get("head_steps_per_s", main_row["steps_per_s"])  # a head from before batched sweeps: alone
    return {"cache_head_steps_per_s": cache, "cache_heads": main_row.get("group_heads", 1),
            "online_steps_per_s": online_row["steps_per_s"], "online_steps": plan.preset.online_steps,
            "speedup": round(cache / online_row["steps_per_s"], 1)}


def _infer(out: Path, data: Path, ckpt: Path, plan: Plan, args: argparse.Namespace, clock: _Timings) -> Path:
    """Every inference variant on val in one pass; returns OUT/infer."""
    from simcal.core.atomic import write_json

    infer_dir = out / "infer"
    infer_dir.mkdir(parents=True, exist_ok=True)
    write_json(infer_dir / "variants.json", plan.variants, indent=2)
    what = f"{len(plan.variants)} variants on val, one pass"
    t0 = clock.start("infer", f"{len(plan.variants)} variants on val in one pass -> {infer_dir}")
    ran = not all(_done(infer_dir / v["name"] / "results.json") for v in plan.variants)
    _simcal("infer", "--checkpoint", ckpt, "--data", data, "--split", "val", "--sweep", infer_dir / "variants.json",
            "--out", infer_dir, "--device", args.device)
    clock.record("infer", what, t0, ran)
    return infer_dir


def _infer_end_to_end(infer_dir: Path, data: Path, ckpts: dict[str, Path], cap: int, args: argparse.Namespace,
                      clock: _Timings) -> None:
    """Each end-to-end detector (Table 2, Table 6's IS) on val with its own classifier, at the benchmark cap ->
    OUT/infer/NAME/."""
    for name, ckpt in ckpts.items():
        results = infer_dir / name / "results.json"
        results.parent.mkdir(parents=True, exist_ok=True)
        what = f"detector {name} on val"
        t0 = clock.start("infer", f"{what} -> {results}")
        ran = not _done(results)
        _simcal("infer", "--checkpoint", ckpt, "--data", data, "--split", "val", "--mode", "orig", "--max-dets", cap,
                "--out", results, "--device", args.device)
        clock.record("infer", what, t0, ran)


def _evaluate(infer_dir: Path, data: Path, plan: Plan, clock: _Timings) -> dict[str, Any]:
    """Box and mask metrics of every planned evaluation; returns them by summary key."""
    from simcal.core.jsonio import read_json

    ann = data / "annotations"
    what = f"{len(plan.evaluations)} metric files, box and mask"
    t0 = clock.start("evaluate", f"{len(plan.variants)} result files")
    summary: dict[str, Any] = {}
    ran = False
    for key, name, cap in plan.evaluations:
        results = infer_dir / name / "results.json"
        metrics = infer_dir / name / ("metrics.json" if cap is None else f"metrics_{cap}.json")
        ran = ran or not _done(metrics)
        _simcal("evaluate", "--gt", ann / "val.json", "--results", results, "--train-ann", ann / "train.json",
                "--iou-type", "both", "--out", metrics, *([] if cap is None else ["--max-dets", cap]))
        summary[key] = read_json(metrics)
    clock.record("evaluate", what, t0, ran)
    summary.update({alias: summary[key] for alias, key in demo_plan.ALIASES.items()})
    return summary


def _report(out: Path, summary: dict[str, Any], plan: Plan) -> None:
    """OUT/summary.json, OUT/report.md and its figures; prints the report."""
    from simcal.core.atomic import write_json, write_text
    from simcal.demo_report import checks, write_report

    summary["checks"] = {what: ok for what, ok, _ in checks(summary)}
    write_json(out / "summary.json", summary, indent=2)
    report = write_report(out, summary, plan.layout)
    write_text(out / "report.md", report)
    print(report)
    print(f"report: {out / 'report.md'}")


def run(args: argparse.Namespace) -> int:
    from simcal.core.device import resolve_device
    from simcal.data.annotations import load_annotations
    from simcal.demo_report import seed_spread

    extras = _extras(args.extras)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    preset = PRESETS[args.preset]
    _write_config(out, args, preset)
    clock = _Timings.load(out / "summary.json")
    data = _data(out, args, clock)
    ckpt = _train(out, data, args, preset, clock)
    _extract(out, ckpt, data, args, clock)
    val_info = load_annotations(data / "annotations" / "val.json").info
    caps = {"benchmark": int(val_info.get("max_dets_per_image", demo_plan.LVIS_CAP)), "lvis": demo_plan.LVIS_CAP}
    plan = demo_plan.build(args.preset, args.seed, out / "heads", caps["benchmark"], extras)
    end_to_end = _train_detectors(out, data, plan.end_to_end, "tiny", "Table 2", preset, args, clock)
    rows = _calibrate(out, plan, args, clock)
    speed = _speed(rows, _calibrate_online(out, data, ckpt, plan, args, clock), plan)
    infer_dir = _infer(out, data, ckpt, plan, args, clock)
    _infer_end_to_end(infer_dir, data, end_to_end, caps["benchmark"], args, clock)
    if plan.cascade is not None:
        _table6(out, data, plan, args, clock)
    summary = _evaluate(infer_dir, data, plan, clock)
    summary.update(seed_spread(summary, plan.seeded, plan.seeds))
    summary["timings"] = clock.records
    summary["calibration_speed"] = speed
    summary["config"] = {"preset": args.preset, "seed": args.seed, "with": list(extras),
                         "calibration_steps": preset.calibration_steps, "table2_iters": preset.table2_iters,
                         "calibration_seeds": list(plan.seeds),
                         "caps": caps, "device": str(resolve_device(args.device)), "calibration_sweep": rows}
    _report(out, summary, plan)
    return 0
