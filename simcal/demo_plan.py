"""What ``simcal demo`` runs: presets, the calibration grid, the inference variants, the report layout.

Declarations only; :func:`build` spells them out for one preset (file and variant names, cap),
and ``simcal.demo`` executes the result. Imports nothing heavy (``simcal demo --help`` reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Preset:
    """Sizes of one ``--preset``: the synthetic benchmark of the same name, training, calibration."""

    benchmark: str  # what ``simcal data synthesize`` makes for this preset (for --help)
    train_iters: int
    train_batch: int
    train_lr: float
    calibration_steps: int
    sweep_steps: tuple[int, ...]  # Fig. 4a step counts besides calibration_steps
    online_steps: int  # online (detector-forward) calibration that measures the cache's speed-up
    table2_iters: int  # each Table-2 detector's training (--with table2); the baseline's schedule but in smoke


#: default: docs/design.md §8.1's recipe at batch 8 (lr scaled to 0.01, 4000 iterations, about 5 epochs);
#: quick: a short run on the 12-class benchmark; smoke: the shortest run through every step (the demo's test).
PRESETS: dict[str, Preset] = {
    "default": Preset("42 classes, 128-px images", 4000, 8, 0.01, 1000, (125, 250, 500, 2000), 100, 4000),
    "quick": Preset("12 classes, 64-px images", 150, 8, 0.02, 150, (50, 300), 10, 150),
    "smoke": Preset("12 classes, 64-px images, 2 val instances per class", 12, 8, 0.02, 40, (20, 80), 5, 2),
}


@dataclass(frozen=True)
class Method:
    """A Table-4 long-tail method: the 3fc_ft head retrained with another sampler or loss."""

    name: str
    label: str
    sampler: str
    loss: str


#: The main calibration: head, sampler, loss (steps and seed come from the preset and --seed).
MAIN_HEAD, MAIN_SAMPLER, MAIN_LOSS = "3fc_ft", "bilevel", "ce"
#: Fig. 4b: the other calibration heads.
OTHER_HEADS = ("2fc_rand", "3fc_rand", "2fc_ncm")
#: Table 4.
DECOUPLED = (Method("decoupled_cm", "CM (margin loss)", "random", "margin"),
             Method("decoupled_lr", "LR (loss re-weighting)", "random", "reweight"),
             Method("decoupled_fl", "FL (focal loss)", "random", "focal"),
             Method("decoupled_is", "IS (repeat-factor sampling)", "repeat_factor", "ce"))
@dataclass(frozen=True)
class EndToEnd:
    """A Table-2 long-tail method: the whole detector trained with it (``simcal train`` flags)."""

    name: str
    label: str
    train_flags: tuple[str, ...]


#: Table 2 (``simcal demo --with table2``): the Table-4 methods trained end to end, each a detector of its own
#: with the baseline's schedule, inferred with its own classifier.
END_TO_END = (EndToEnd("table2_cm", "CM (margin loss)", ("--cls-loss", "margin")),
              EndToEnd("table2_lr", "LR (loss re-weighting)", ("--cls-loss", "reweight")),
              EndToEnd("table2_fl", "FL (focal loss)", ("--cls-loss", "focal")),
              EndToEnd("table2_is", "IS (repeat-factor sampling)", ("--sampler", "repeat_factor")))
#: What ``simcal demo --with`` adds: the extra detector trainings behind a part of the report.
EXTRAS = {"table2": "Table 2: the four long-tail methods trained end to end (four more detector trainings)",
          "table6": "Table 6: multi-stage calibration on a Cascade Mask R-CNN (two cascade trainings: the "
                    "baseline and IS; per-stage caches and heads)"}
#: Table 6 (``--with table6``): the cascade detectors, trained with the baseline's schedule.
CASCADE_ARCH = "tiny_cascade"
CASCADE_STAGES = 3
CASCADE_TRAININGS = (EndToEnd("cascade_baseline", "cascade baseline", ()),
                     EndToEnd("cascade_is", "IS (repeat-factor sampling, end to end)", ("--sampler", "repeat_factor")))
#: Table 6's calibrated rows: (summary key, label, the stages that get a calibrated head; the others keep
#: their own classifier). Dual head, sel, T = MAIN_T.
CASCADE_CALIBRATED = (("cascade_cal_last", "calibrate the last stage (dual head, sel)", (2,)),
                      ("cascade_cal_all", "calibrate every stage (dual head, sel)", (0, 1, 2)))
TABLE6 = (("cascade_baseline", "cascade baseline"), *((k, lab) for k, lab, _ in CASCADE_CALIBRATED),
          ("cascade_is", "IS (repeat-factor sampling, end to end)"))
#: Table 2's rows, and its comparison with Table 4: (end-to-end key, decoupled key, method).
TABLE2 = (("baseline", "baseline (CE)"), *((m.name, m.label) for m in END_TO_END))
TABLE2_VS_4 = tuple((e.name, d.name, d.label.split(" (")[0]) for e, d in zip(END_TO_END, DECOUPLED))

#: Fig. 4c boundaries (the paper varies T from 10 to 1000; 3000 covers every class here). MAIN_T is the
#: dual head's own T, i.e. the ``dual_sel`` variant.
T_VALUES = (10, 30, 100, 300, 1000, 3000)
MAIN_T = 300
#: Post-hoc rules, each re-scoring the original head with gamma = 1.
POSTHOC = ("norcal", "logit_adjust", "tau_norm")
#: LVIS's detections per image. Variants without a cap keep it and are evaluated at both caps.
LVIS_CAP = 300
#: Runs of the summary that are another run under a second name (the main head is Fig. 4b's 3fc_ft).
ALIASES = {"head_3fc_ft": "dual_sel"}
#: Calibration seeds of the seeded rows (--seed and the next ones): each row's mean and std over them.
CALIBRATION_SEEDS = 3
#: The calibration-side rows run once per calibration seed (Tables 3, 4, 5 and Fig. 4b); the detector stays
#: one training run.
SEEDED = ("calibrated", "dual_sel", "dual_avg", *(f"head_{h}" for h in OTHER_HEADS), *(m.name for m in DECOUPLED))

#: The seed comparisons of the report: (summary key, other key, metric, what); a tie when the means are within
#: one std (the larger of the two).
SEED_COMPARISONS = (("dual_sel", "dual_avg", "AP", "sel vs avg (Table 5)"),
                    ("dual_sel", "calibrated", "AP", "dual head vs calibrated alone (Table 3)"),
                    *(("dual_sel", f"head_{h}", "AP1", f"3fc_ft vs {h} (Fig. 4b)") for h in OTHER_HEADS),
                    *(("dual_sel", m.name, "AP1", f"bi-level vs {m.label} (Table 4)") for m in DECOUPLED))

#: The report's tables: (summary key, label) rows.
TABLE3 = (("baseline", "baseline"), ("calibrated", "calibrated (3fc_ft)"), ("dual_sel", "dual head (sel)"))
TABLE5 = (("dual_sel", "sel (Eq. 2)"), ("dual_avg", "avg"))
FIG4B = (("baseline", "baseline"), ("head_2fc_ncm", "2fc_ncm"), ("head_2fc_rand", "2fc_rand"),
         ("head_3fc_rand", "3fc_rand"), ("head_3fc_ft", "3fc_ft"))
TABLE4 = (*((m.name, m.label) for m in DECOUPLED), ("dual_sel", "bi-level sampling (SimCal)"))
UPPER_BOUND = (("baseline", "baseline"), ("props_gt", "props-gt (upper bound)"), ("norcal", "NorCal"),
               ("logit_adjust", "logit adjustment"), ("tau_norm", "tau-norm"), ("dual_sel", "SimCal dual head"))
AT_LVIS_CAP = ((f"baseline_{LVIS_CAP}", "baseline"), (f"dual_sel_{LVIS_CAP}", "dual head (sel)"))
#: The ``what`` of the feature-cache extraction's timing record (the report cites the train cache's).
EXTRACT_WHAT = "{split} feature cache"


@dataclass(frozen=True)
class Layout:
    """Which runs feed which table and figure: (summary key, label) rows, (summary key, x) points."""

    table3: tuple[tuple[str, str], ...]
    table5: tuple[tuple[str, str], ...]
    fig4a: tuple[tuple[str, int], ...]  # calibration steps; 0 = the detector's own classifier
    fig4b: tuple[tuple[str, str], ...]
    fig4c: tuple[tuple[str, int], ...]  # head/tail boundary T
    table4: tuple[tuple[str, str], ...]
    upper_bound: tuple[tuple[str, str], ...]
    at_lvis_cap: tuple[tuple[str, str], ...]
    table2: tuple[tuple[str, str], ...] = ()  # empty without --with table2
    table2_vs_4: tuple[tuple[str, str, str], ...] = ()  # (end-to-end key, decoupled key, method)
    table6: tuple[tuple[str, str], ...] = ()  # empty without --with table6


@dataclass(frozen=True)
class CascadePlan:
    """Table 6 spelled out: the cascade trainings, one train cache and one calibration sweep per stage, and the
    cascade baseline's inference sweep."""

    trainings: tuple[EndToEnd, ...]
    caches: tuple[str, ...]  # stage t's train cache (simcal extract --stage t)
    head_dirs: tuple[str, ...]  # stage t's calibration sweep folder
    grid: list[dict[str, list]]  # each stage's sweep: the main head over the calibration seeds
    variants: list[dict[str, Any]]  # ``simcal infer --sweep`` of the cascade baseline detector


@dataclass(frozen=True)
class Plan:
    """One preset spelled out: what to calibrate, infer and evaluate, and how the report lays it out."""

    preset: Preset
    grid: list[dict[str, list]]  # ``simcal calibrate --sweep`` grids
    main_head: str  # the head file the sweep makes for the main calibration
    variants: list[dict[str, Any]]  # ``simcal infer --sweep`` variants
    evaluations: tuple[tuple[str, str, int | None], ...]  # (summary key, variant, --max-dets or None)
    layout: Layout
    end_to_end: tuple[EndToEnd, ...] = ()  # Table 2's detectors (--with table2), inferred at the benchmark cap
    seeds: tuple[int, ...] = ()  # the calibration seeds of the SEEDED rows, --seed first
    seeded: tuple[str, ...] = SEEDED  # the rows run once per calibration seed
    cascade: CascadePlan | None = None  # Table 6 (--with table6)


def seeded_name(key: str, seed: int) -> str:
    """The summary key (and variant name) of seeded row ``key`` with another calibration ``seed``."""
    return f"{key}.seed{seed}"


def head_name(head: str, sampler: str, loss: str, steps: int, seed: int) -> str:
    """The file name ``simcal calibrate --sweep`` gives a configuration."""
    return f"{head}_{sampler}_{loss}_s{steps}_seed{seed}.pth"


def build(preset_name: str, seed: int, heads: Path, cap: int, extras: tuple[str, ...] = ()) -> Plan:
    """The plan for one preset; ``heads`` is the sweep's folder, ``cap`` the benchmark's detections per image,
    ``extras`` what ``--with`` adds (:data:`EXTRAS`)."""
    p = PRESETS[preset_name]

    def head(h: str = MAIN_HEAD, sampler: str = MAIN_SAMPLER, loss: str = MAIN_LOSS,
             n: int = p.calibration_steps, s: int = seed) -> str:
        return str(heads / head_name(h, sampler, loss, n, s))

    seeds = [seed + k for k in range(CALIBRATION_SEEDS)]
    grid = [{"head": [MAIN_HEAD, *OTHER_HEADS], "seed": seeds}, {"steps": list(p.sweep_steps)},
            *[{"sampler": [m.sampler], "loss": [m.loss], "seed": seeds} for m in DECOUPLED]]
    main = head()
    # baseline and dual_sel keep LVIS's 300 detections (the report's second table); every other variant
    # stops at the benchmark cap: same detections at that cap, a fraction of the mask cost
    variants = [{"name": "baseline"}, {"name": "dual_sel", "mode": "sel", "head_ckpt": main},
                {"name": "calibrated", "mode": "cal", "head_ckpt": main, "max_dets": cap},
                {"name": "dual_avg", "mode": "avg", "head_ckpt": main, "max_dets": cap}]
    variants += [{"name": f"head_{h}", "mode": "sel", "head_ckpt": head(h), "max_dets": cap} for h in OTHER_HEADS]
    variants += [{"name": f"steps_{n}", "mode": "cal", "head_ckpt": head(n=n), "max_dets": cap} for n in p.sweep_steps]
    variants += [{"name": f"T_{t}", "mode": "sel", "head_ckpt": main, "T": t, "max_dets": cap}
                 for t in T_VALUES if t != MAIN_T]
    variants += [{"name": m.name, "mode": "sel", "head_ckpt": head(sampler=m.sampler, loss=m.loss), "max_dets": cap}
                 for m in DECOUPLED]
    variants += [{"name": "props_gt", "props_gt": True, "max_dets": cap}]
    variants += [{"name": r, "posthoc": r, "gamma": 1.0, "max_dets": cap} for r in POSTHOC]
    by_name = {v["name"]: v for v in variants}
    for s in seeds[1:]:  # the seeded rows again with the other seeds' heads
        for name in SEEDED:
            v = by_name[name]
            h = Path(v["head_ckpt"]).name.replace(f"_seed{seed}.pth", f"_seed{s}.pth")
            variants.append({**v, "name": seeded_name(name, s), "head_ckpt": str(heads / h), "max_dets": cap})
    # every variant at the benchmark cap; those that keep LVIS's cap also at that cap, as NAME_300
    evaluations = []
    for v in variants:
        evaluations.append((v["name"], v["name"], None))
        if v.get("max_dets", LVIS_CAP) == LVIS_CAP:
            evaluations.append((f"{v['name']}_{LVIS_CAP}", v["name"], LVIS_CAP))
    end_to_end = END_TO_END if "table2" in extras else ()
    evaluations += [(m.name, m.name, None) for m in end_to_end]
    cascade = cascade_plan(p, heads, cap, seeds) if "table6" in extras else None
    if cascade is not None:
        evaluations += [(v["name"], v["name"], None) for v in cascade.variants]
        evaluations += [(m.name, m.name, None) for m in cascade.trainings[1:]]
    steps = sorted({*p.sweep_steps, p.calibration_steps})
    layout = Layout(
        table3=TABLE3, table5=TABLE5,
        fig4a=(("baseline", 0), *(("calibrated" if n == p.calibration_steps else f"steps_{n}", n) for n in steps)),
        fig4b=FIG4B,
        fig4c=tuple(("dual_sel" if t == MAIN_T else f"T_{t}", t) for t in T_VALUES),
        table4=TABLE4, upper_bound=UPPER_BOUND, at_lvis_cap=AT_LVIS_CAP,
        table2=TABLE2 if end_to_end else (), table2_vs_4=TABLE2_VS_4 if end_to_end else (),
        table6=TABLE6 if cascade else (),
    )
    seeded = SEEDED + (tuple(k for k, _, _ in CASCADE_CALIBRATED) if cascade else ())
    return Plan(p, grid, main, variants, tuple(evaluations), layout, end_to_end, tuple(seeds), seeded, cascade)


def cascade_plan(p: Preset, heads: Path, cap: int, seeds: list[int]) -> CascadePlan:
    """Table 6's caches, per-stage sweeps and variants (every variant at the benchmark cap ``cap``)."""
    stages = range(CASCADE_STAGES)
    head_dirs = tuple(str(heads / f"cascade_stage{t}") for t in stages)

    def stage_heads(on: tuple[int, ...], seed: int) -> list[str | None]:
        return [str(Path(head_dirs[t]) / head_name(MAIN_HEAD, MAIN_SAMPLER, MAIN_LOSS, p.calibration_steps, seed))
                if t in on else None for t in stages]

    variants: list[dict[str, Any]] = [{"name": "cascade_baseline", "max_dets": cap}]
    for s in seeds:
        variants += [{"name": key if s == seeds[0] else seeded_name(key, s), "mode": "sel",
                      "stage_heads": stage_heads(on, s), "max_dets": cap} for key, _, on in CASCADE_CALIBRATED]
    return CascadePlan(CASCADE_TRAININGS, tuple(f"cascade_train_stage{t}.zarr" for t in stages), head_dirs,
                       [{"head": [MAIN_HEAD], "seed": list(seeds)}], variants)
