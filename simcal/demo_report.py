"""The demo's report: the paper's tables and Fig. 4 panels from ``summary.json`` (markdown + PNG).

Every number comes from a metrics file ``simcal evaluate`` wrote; this module only lays
them out. ``summary`` maps a run name to ``{"bbox": metrics, "segm": metrics, "config": ...}``
(metrics are fractions; tables print percentages); ``summary["timings"]`` is a list of
``{"step", "what", "seconds", "reused"}`` records. Which runs feed which table and figure is
``simcal.demo_plan.Layout``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from simcal.core.atomic import save_png
from simcal.core.formatting import pct
from simcal.demo_plan import EXTRACT_WHAT, Layout

BINS = ("AP1", "AP2", "AP3", "AP4")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | os.PathLike) -> Path:
    return save_png(out, fig, bbox_inches="tight")


def _plot_lines(summary: dict[str, Any], xs: Sequence[float], keys: Sequence[str], xlabel: str, title: str,
                xscale: dict[str, Any], out: Path) -> Path:
    """Mask AP1-AP4 and AP of the runs ``keys`` against ``xs`` (one line per metric)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for metric in (*BINS, "AP"):
        ax.plot(xs, [100 * summary[k]["segm"][metric] for k in keys], marker="o",
                lw=2.2 if metric == "AP" else 1.2, color="black" if metric == "AP" else None, label=metric)
    ax.set_xscale(**xscale)
    ax.set_xticks(list(xs), [f"{x:g}" for x in xs])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mask AP (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.1), frameon=False)
    ax.grid(alpha=0.3)
    path = _save(fig, out)
    plt.close(fig)
    return path


def plot_steps(summary: dict[str, Any], steps: Sequence[int], keys: Sequence[str], out: Path) -> Path:
    """Fig. 4a: mask AP1-AP4 and AP of the calibrated head against calibration steps."""
    return _plot_lines(summary, steps, keys, "calibration steps (0 = the detector's own classifier)",
                       "Fig. 4a: calibration dynamics (3fc_ft, calibrated head only)",
                       {"value": "symlog", "linthresh": max(1, min(s for s in steps if s > 0))}, out)


def plot_heads(summary: dict[str, Any], keys: Sequence[str], labels: Sequence[str], out: Path) -> Path:
    """Fig. 4b: mask AP per bin for each calibration head (dual head, sel)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=120)
    metrics = (*BINS, "AP")
    width = 0.8 / len(keys)
    for j, (k, lab) in enumerate(zip(keys, labels)):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(metrics))]
        ax.bar(xs, [100 * max(summary[k]["segm"][m], 0) for m in metrics], width=width, label=lab)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("mask AP (%)")
    ax.set_title("Fig. 4b: calibration head (dual head, sel, T = 300)")
    ax.legend(fontsize=8, ncol=len(keys), loc="lower center", bbox_to_anchor=(0.5, 1.1), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    path = _save(fig, out)
    plt.close(fig)
    return path


def plot_T(summary: dict[str, Any], Ts: Sequence[float], keys: Sequence[str], out: Path) -> Path:
    """Fig. 4c: mask AP (and the bins) of the dual head against the head/tail boundary T."""
    return _plot_lines(summary, Ts, keys, "T: classes with at most T train instances use the calibrated head",
                       "Fig. 4c: head/tail boundary T (dual head, sel)", {"value": "log"}, out)


def checks(summary: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The acceptance points of the demo (mask AP at the benchmark cap), each with what was measured."""
    b, s, a, r = (summary[k]["segm"] for k in ("baseline", "dual_sel", "dual_avg", "head_2fc_rand"))
    p = lambda x: f"{100 * x:.1f}"  # noqa: E731
    return [
        ("dual head (sel, 3fc_ft) AP1 >= baseline AP1 + 5", s["AP1"] >= b["AP1"] + 0.05,
         f"{p(s['AP1'])} vs {p(b['AP1'])}"),
        ("dual head AP4 >= baseline AP4 - 1", s["AP4"] >= b["AP4"] - 0.01, f"{p(s['AP4'])} vs {p(b['AP4'])}"),
        ("dual head AP > baseline AP", s["AP"] > b["AP"], f"{p(s['AP'])} vs {p(b['AP'])}"),
        ("sel >= avg on AP", s["AP"] >= a["AP"], f"{p(s['AP'])} vs {p(a['AP'])}"),
        ("3fc_ft >= 2fc_rand on AP1", s["AP1"] >= r["AP1"], f"{p(s['AP1'])} vs {p(r['AP1'])}"),
    ]


def _seconds(summary: dict[str, Any], step: str, what: str) -> float:
    """The seconds of a timing record of ``summary`` (NaN if there is none)."""
    return next((r["seconds"] for r in summary["timings"] if (r["step"], r["what"]) == (step, what)), float("nan"))


def timings_table(records: Sequence[dict[str, Any]]) -> list[str]:
    """The wall-clock table: one row per timing record, reused steps marked as the previous run's."""
    lines = ["| step | what | seconds | measured |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['what']} | {r['seconds']:.1f} | "
              f"{'earlier run (output reused)' if r['reused'] else 'this run'} |" for r in records]
    return lines


def seed_spread(summary: dict[str, Any], keys: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """``KEY_mean`` and ``KEY_std`` for each seeded row: ``{iou type: {metric: value}}`` over its runs with
    ``seeds`` (``summary[KEY]`` is the first seed's, ``summary[KEY.seedS]`` the others'); std with n - 1."""
    import statistics

    from simcal.demo_plan import seeded_name

    out: dict[str, Any] = {}
    for key in keys:
        runs = [summary[key], *(summary[seeded_name(key, s)] for s in seeds[1:])]
        for stat, fn in (("mean", statistics.fmean), ("std", statistics.stdev)):
            out[f"{key}_{stat}"] = {t: {m: fn([r[t][m] for r in runs]) for m in runs[0][t]
                                        if all(isinstance(r[t].get(m), (int, float)) for r in runs)}
                                    for t in ("bbox", "segm") if t in runs[0]}
    return out


def seeds_section(summary: dict[str, Any], seeds: Sequence[int]) -> list[str]:
    """Mask AP mean +- std of the seeded rows over the calibration seeds, and which comparisons are ties."""
    from simcal.demo_plan import SEED_COMPARISONS, SEEDED

    if len(seeds) < 2:
        return []
    cols = (*BINS, "AP")

    def cell(key: str, m: str) -> str:
        mean, std = summary[f"{key}_mean"]["segm"][m], summary[f"{key}_std"]["segm"][m]
        return f"{100 * mean:.1f} ± {100 * std:.1f}"

    lines = ["## Calibration seeds: mean ± std", "",
             f"The calibration-side rows over calibration seeds {', '.join(map(str, seeds))} (the same detector, "
             "one training run, and the same cache), mask AP (%), std over the seeds (n - 1):", "",
             "| run | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {key} | " + " | ".join(cell(key, m) for m in cols) + " |" for key in SEEDED]
    lines += ["", "A comparison is a tie when the means are within one std (the larger of the two):", "",
              "| comparison | metric | first | second | verdict |", "|---|---|---|---|---|"]
    for a, b, m, what in SEED_COMPARISONS:
        ma, mb = summary[f"{a}_mean"]["segm"][m], summary[f"{b}_mean"]["segm"][m]
        sd = max(summary[f"{a}_std"]["segm"][m], summary[f"{b}_std"]["segm"][m])
        verdict = "tie" if abs(ma - mb) <= sd else ("first ahead" if ma > mb else "second ahead")
        lines.append(f"| {what} | {m} | {cell(a, m)} | {cell(b, m)} | {verdict} |")
    return [*lines, ""]


def table2_section(summary: dict[str, Any], layout: Layout) -> list[str]:
    """Table 2 (``--with table2``): the methods trained end to end, then beside Table 4's decoupled runs."""
    from simcal.evaluate.tables import compare_table

    if not layout.table2:
        return []
    iters = summary["config"].get("table2_iters", "the baseline's")
    lines = ["## Table 2: the long-tail methods trained end to end", "",
             f"Each method trains the whole detector ({iters} iterations, the baseline's settings otherwise) and "
             "is evaluated with its own classifier, single head: CM = class-aware margin loss, LR = loss "
             "re-weighting, FL = focal loss, IS = image-level repeat-factor sampling (t = 0.001).", "",
             compare_table([summary[k] for k, _ in layout.table2], [lab for _, lab in layout.table2]), "",
             "End to end (Table 2) against decoupled on the frozen detector's cache with the dual head (Table 4), "
             "mask AP (%):", "",
             "| method | AP1 end to end | AP1 decoupled | AP end to end | AP decoupled |", "|---|---|---|---|---|"]
    for e2e, dec, method in layout.table2_vs_4:
        a, b = summary[e2e]["segm"], summary[dec]["segm"]
        lines.append(f"| {method} | {pct(a.get('AP1'))} | {pct(b.get('AP1'))} | {pct(a.get('AP'))} | "
                     f"{pct(b.get('AP'))} |")
    return [*lines, ""]


def table6_section(summary: dict[str, Any], layout: Layout) -> list[str]:
    """Table 6 (``--with table6``): a Cascade Mask R-CNN, calibrated at its last stage or at every stage, and
    trained end to end with IS; the paper's expectations with what was measured."""
    from simcal.evaluate.tables import compare_table

    if not layout.table6:
        return []
    cfg = summary["config"]
    base, last, every = (summary[k]["segm"] for k in ("cascade_baseline", "cascade_cal_last", "cascade_cal_all"))
    lines = ["## Table 6: multi-stage calibration (Cascade Mask R-CNN)", "",
             f"A tiny Cascade Mask R-CNN (three box stages at IoU 0.5 / 0.6 / 0.7, class scores averaged over the "
             f"stages; {cfg.get('table2_iters', 'the baseline')} training iterations). Each stage gets its own "
             "train feature cache (its RoIs regressed by the stages before it, labelled at its IoU) and its own "
             "3fc_ft head, calibrated from that stage's classifier with bi-level sampling; at test time the "
             "calibrated logits are averaged over the stages like the original ones, and the dual head (sel, "
             "T = 300) combines the two averages. A stage without a calibrated head contributes its own logits. "
             "IS trains the whole cascade with repeat-factor sampling.", "",
             compare_table([summary[k] for k, _ in layout.table6], [lab for _, lab in layout.table6]), ""]
    p = lambda x: f"{100 * x:.1f}"  # noqa: E731
    expect = [("every stage >= last stage on AP1", every["AP1"] >= last["AP1"],
               f"{p(every['AP1'])} vs {p(last['AP1'])}"),
              ("every stage: AP4 within 1 point of the baseline", abs(every["AP4"] - base["AP4"]) <= 0.01,
               f"{p(every['AP4'])} vs {p(base['AP4'])}")]
    lines += ["| the paper's shape (mask AP) | holds | measured |", "|---|---|---|",
              *[f"| {what} | {'yes' if ok else '**no**'} | {got} |" for what, ok, got in expect], ""]
    if "cascade_cal_all_std" in summary:
        seeds = ", ".join(map(str, cfg.get("calibration_seeds", [])))
        lines += [f"Over calibration seeds {seeds} (mask AP %, mean ± std):", "", "| run | AP1 | AP |", "|---|---|---|"]
        for key, lab in layout.table6[1:3]:
            mean, std = summary[f"{key}_mean"]["segm"], summary[f"{key}_std"]["segm"]
            lines.append(f"| {lab} | {p(mean['AP1'])} ± {p(std['AP1'])} | {p(mean['AP'])} ± {p(std['AP'])} |")
        a, b = summary["cascade_cal_all_mean"]["segm"]["AP1"], summary["cascade_cal_last_mean"]["segm"]["AP1"]
        sd = max(summary["cascade_cal_all_std"]["segm"]["AP1"], summary["cascade_cal_last_std"]["segm"]["AP1"])
        verdict = "a tie (within one std)" if abs(a - b) <= sd else ("every stage ahead" if a > b else "last ahead")
        lines += ["", f"Every stage vs last stage on AP1: {verdict}.", ""]
    return lines


def write_report(out: Path, summary: dict[str, Any], layout: Layout) -> str:
    """``OUT/report.md`` (returned as text) and its PNG figures, from the evaluated runs and ``layout``."""
    from simcal.calibrate.calibrate import results_table
    from simcal.evaluate.tables import compare_table

    def table(rows: Sequence[tuple[str, str]]) -> str:
        return compare_table([summary[k] for k, _ in rows], [lab for _, lab in rows])

    def mask_rows(rows: Sequence[tuple[str, str]], first: str = "run") -> list[str]:
        cols = (*BINS, "APr", "APc", "APf", "AP")
        lines = [f"| {first} | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| {lab} | " + " | ".join(pct(summary[k]["segm"].get(c)) for c in cols) + " |" for k, lab in rows]
        return lines

    cfg, caps, speed = summary["config"], summary["config"]["caps"], summary["calibration_speed"]
    plot_steps(summary, [n for _, n in layout.fig4a], [k for k, _ in layout.fig4a], out / "fig4a_steps.png")
    plot_heads(summary, [k for k, _ in layout.fig4b], [lab for _, lab in layout.fig4b], out / "fig4b_heads.png")
    plot_T(summary, [t for _, t in layout.fig4c], [k for k, _ in layout.fig4c], out / "fig4c_T.png")

    lines = [
        "# SimCal demo report",
        "",
        f"Synthetic long-tail benchmark, preset `{cfg['preset']}` (`{out / 'data'}`); train distribution: "
        "![train instances](train_instances.png)",
        "",
        f"Baseline: the tiny Mask R-CNN. Calibration: bi-level sampling from the train feature cache, "
        f"`3fc_ft` head, {cfg['calibration_steps']} steps, seed {cfg['seed']} unless a row says otherwise. "
        "Dual head: paper Eq. 2 with T = 300. "
        f"Every table is at the benchmark's cap of {caps['benchmark']} detections per image "
        f"(300 x C / 1230, docs/design.md §8.1: the competition for slots LVIS has with 1,230 classes) "
        f"except the one headed {caps['lvis']}, LVIS's cap.",
        "",
        "## Checks",
        "",
        "| acceptance point (mask AP) | holds | measured |",
        "|---|---|---|",
        *[f"| {what} | {'yes' if ok else '**no**'} | {got} |" for what, ok, got in checks(summary)],
        "",
        "## Table 3: baseline, calibrated, dual head",
        "",
        table(layout.table3),
        "",
        "## Table 5: combining the two heads",
        "",
        table(layout.table5),
        "",
        "## Fig. 4a: calibration steps",
        "",
        "Calibrated head alone (`cal`), each step count a full schedule (lr x0.1 at 75 % and 92 %); "
        "0 steps is the detector's own classifier (3fc_ft starts equal to it).",
        "",
        "![Fig. 4a](fig4a_steps.png)",
        "",
        *mask_rows([(k, str(n)) for k, n in layout.fig4a], "steps"),
        "",
        "## Fig. 4b: calibration head",
        "",
        "Each head calibrated the same way, used as the dual head (sel, T = 300). 2fc_ncm: cosine nearest class "
        "mean on the detector's frozen fc6/fc7 representation; 2fc_rand / 3fc_rand: random init; 3fc_ft: "
        "initialised from the detector's head.",
        "",
        "![Fig. 4b](fig4b_heads.png)",
        "",
        *mask_rows(layout.fig4b, "head"),
        "",
        "## Fig. 4c: head/tail boundary T",
        "",
        "![Fig. 4c](fig4c_T.png)",
        "",
        *mask_rows([(k, f"T = {t:g}") for k, t in layout.fig4c], "T"),
        "",
        "## Table 4: the decoupled scheme with other long-tail methods",
        "",
        "Each method retrains the 3fc_ft head from the same cache for the same steps and is used as the dual "
        "head (sel), as in the paper: CM = class-aware margin loss (random sampling), LR = loss re-weighting "
        "(random), FL = focal loss (random), IS = image-level repeat-factor sampling (t = 0.001, CE).",
        "",
        table(layout.table4),
        "",
        *table2_section(summary, layout),
        *table6_section(summary, layout),
        *seeds_section(summary, cfg.get("calibration_seeds", [])),
        "## Upper bound and post-hoc baselines",
        "",
        "props-gt: each proposal classified by its ground-truth box (IoU >= 0.5), scored by the detector's "
        "foreground confidence; boxes and masks stay the detector's (paper Fig. 1c). Post-hoc rules re-score "
        "the original head without training, gamma = tau = 1 (not tuned): NorCal (p_z / N_z, background kept, "
        "renormalised), logit adjustment (l_z - log prior_z), tau-norm (classifier rows / ||W_z||).",
        "",
        table(layout.upper_bound),
        "",
        f"## Baseline and dual head at LVIS's cap of {caps['lvis']} per image",
        "",
        "With 300 slots for 42 classes the tail detections of the baseline survive too, so the gap narrows "
        "(docs/design.md §8.1); the other runs are kept at the benchmark cap only.",
        "",
        table(layout.at_lvis_cap),
        "",
        "## Calibration from the cache vs. from the detector",
        "",
        f"Same head (3fc_ft), sampler (bi-level) and seed, this machine ({cfg['device']}), in head-steps/s "
        f"(heads x steps per second): {speed['cache_head_steps_per_s']:.1f} from the cache, where the sweep "
        f"trains the {speed['cache_heads']} heads on this head's batch stream together, "
        f"{speed['online_steps_per_s']:.1f} with a frozen detector forward every step for one head (the "
        f"paper's/released code's way, {speed['online_steps']} steps): **{speed['speedup']:.1f}x**. The cache cost "
        f"{_seconds(summary, 'extract', EXTRACT_WHAT.format(split='train')):.0f} s to extract once.",
        "",
        "## The calibration sweep's cheap signal: proposal accuracy on the val cache",
        "",
        "Before any inference, `simcal calibrate --sweep --eval-cache` scores each head by the classification "
        "accuracy of the val cache's proposals (foreground rows per bin, background rows), in %:",
        "",
        results_table(cfg["calibration_sweep"]),
        "",
        "## Wall-clock (this machine)",
        "",
        *timings_table(summary["timings"]),
        "",
    ]
    return "\n".join(lines) + "\n"
