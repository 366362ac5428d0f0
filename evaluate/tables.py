"""Markdown tables in percent, in the paper's column order (AP1 AP2 AP3 AP4 APr APc APf AP)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from simcal.core.errors import input_error
from simcal.core.formatting import pct
from simcal.core.jsonio import read_json
from simcal.evaluate.protocol import IOU_TYPES, METRIC_KEYS, PAPER_COLUMNS

IOU_NAMES = {"bbox": "box", "segm": "mask"}
DETAIL_COLUMNS = ("AP50", "AP75", "APs", "APm", "APl")


def _bins_note(config: Mapping[str, Any]) -> str:
    labels = config.get("bin_labels") or {}
    bins = ", ".join(f"AP{k} {labels[k]}" for k in sorted(labels))
    return f"bins ({config.get('bins', '?')}, training instances): {bins}" if bins else ""


def metrics_table(doc: Mapping[str, Any]) -> str:
    """The table ``simcal evaluate`` prints: one row per IoU type, paper order, then the other metrics."""
    config = doc.get("config", {})
    types = [t for t in IOU_TYPES if t in doc]
    lines = [
        "| AP (%) | " + " | ".join(PAPER_COLUMNS) + " |",
        "|---|" + "---|" * len(PAPER_COLUMNS),
    ]
    for t in types:
        lines.append(f"| {IOU_NAMES[t]} | " + " | ".join(pct(doc[t].get(k)) for k in PAPER_COLUMNS) + " |")
    lines += ["", "| AP (%) | " + " | ".join(DETAIL_COLUMNS) + " |", "|---|" + "---|" * len(DETAIL_COLUMNS)]
    for t in types:
        lines.append(f"| {IOU_NAMES[t]} | " + " | ".join(pct(doc[t].get(k)) for k in DETAIL_COLUMNS) + " |")
    notes = [f"max detections per image: {config.get('max_dets_per_image', '?')}"]
    if _bins_note(config):
        notes.append(_bins_note(config))
    notes.append("APr/c/f: LVIS frequency of the ground truth; '-' = no class of that group in val")
    lines += ["", "; ".join(notes)]
    return "\n".join(lines)


def load_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """Read a METRICS.json written by ``simcal evaluate``; InputError if it is not one."""
    path = Path(path)
    doc = read_json(path, "a metrics json file", "pass a METRICS.json written by 'simcal evaluate --out'")
    if not isinstance(doc, dict) or not any(isinstance(doc.get(t), dict) for t in IOU_TYPES):
        raise input_error(
            path, "has no 'bbox' or 'segm' metrics", "pass a METRICS.json written by 'simcal evaluate --out'"
        )
    for t in IOU_TYPES:
        if t in doc and not all(isinstance(doc[t].get(k), (int, float)) for k in PAPER_COLUMNS):
            missing = next(k for k in PAPER_COLUMNS if not isinstance(doc[t].get(k), (int, float)))
            raise input_error(
                path, f"'{t}' has no number for {missing}", "re-run 'simcal evaluate --out' to rewrite it"
            )
    return doc


def compare_table(docs: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> str:
    """Several metric files side by side (the paper's Table-3 layout), one table per IoU type."""
    out: list[str] = []
    for t in IOU_TYPES:
        rows = [(lab, d) for lab, d in zip(labels, docs) if t in d]
        if not rows:
            continue
        if out:
            out.append("")
        out.append(f"{IOU_NAMES[t]} AP (%)")
        out.append("")
        out.append("| run | " + " | ".join(PAPER_COLUMNS) + " | max dets |")
        out.append("|---|" + "---|" * (len(PAPER_COLUMNS) + 1))
        for lab, d in rows:
            cap = d.get("config", {}).get("max_dets_per_image", "?")
            out.append(f"| {lab} | " + " | ".join(pct(d[t].get(k)) for k in PAPER_COLUMNS) + f" | {cap} |")
    caps = {str(d.get("config", {}).get("max_dets_per_image", "?")) for d in docs}
    bins = {str(d.get("config", {}).get("bins", "?")) for d in docs}
    notes = []
    if len(caps) > 1:
        notes.append(
            f"warning: the files use different detection caps ({', '.join(sorted(caps))}); their APs are not comparable"
        )
    if len(bins) > 1:
        notes.append(f"warning: the files use different bin schemes ({', '.join(sorted(bins))})")
    elif docs and _bins_note(docs[0].get("config", {})):
        notes.append(_bins_note(docs[0].get("config", {})))
    if notes:
        out += [""] + notes
    return "\n".join(out)


def per_class_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per-category AP rows as CSV text (AP as fractions, -1 = no ground truth in val)."""
    buf = io.StringIO()
    if not rows:
        return ""
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


__all__ = ["METRIC_KEYS", "compare_table", "load_metrics", "metrics_table", "pct", "per_class_csv"]
