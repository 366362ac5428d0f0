"""Plots of category statistics (the paper's Fig. 1a / Fig. 3)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from simcal.data.statistics import BIN_EDGES, bin_labels, instance_bin


def plot_instance_distribution(summary: dict[str, Any], out: str | os.PathLike) -> Path:
    """Sorted per-class train instance counts on a log axis, bins shaded; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scheme = summary["bins_scheme"]
    counts = sorted((c["instance_count"] for c in summary["categories"]), reverse=True)
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=120)
    colours = {1: "#d62728", 2: "#ff7f0e", 3: "#2ca02c", 4: "#1f77b4"}
    labels = bin_labels(scheme)

    xs = range(len(counts))
    bar_colours = [colours[instance_bin(n, scheme)] for n in counts]
    ax.bar(xs, [max(n, 0.8) for n in counts], width=1.0, color=bar_colours, linewidth=0)
    for edge in BIN_EDGES[scheme]:
        ax.axhline(edge, color="grey", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlim(-0.5, len(counts) - 0.5)
    ax.set_xlabel("categories, sorted by training instances")
    ax.set_ylabel("training instances (log)")
    ax.set_title(f"{Path(summary['file']).name}: {summary['num_categories']} categories, "
                 f"{summary['num_instances']} instances")
    from matplotlib.patches import Patch

    handles = [Patch(color=col, label=f"bin {b} ({labels[b]}): {summary['bins'][str(b)]} classes")
               for b, col in colours.items()]
    ax.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
    fig.tight_layout()
    from simcal.core.atomic import save_png

    try:
        return save_png(out, fig)
    finally:
        plt.close(fig)
