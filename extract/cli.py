"""``simcal extract`` and ``simcal cache``: the feature cache (issue [4/6])."""

from simcal.pending import add_pending_command


def add_parser(sub) -> None:
    add_pending_command(
        sub, "extract", "dump per-proposal RoI features to a zarr cache",
        "Run a frozen detector once over the training images and store, per proposal, the\n"
        "RoIAlign feature, label and IoU in a chunked zarr store indexed by class.\n"
        "Inputs: --checkpoint CKPT and a dataset. Output: CACHE.zarr.",
        "[4/6]",
    )
    add_pending_command(
        sub, "cache", "inspect, verify or export a feature cache",
        "Subcommands info / verify / export (h5py) over a feature cache.\n"
        "Input: CACHE.zarr. Output: a report, or OUT.h5.",
        "[4/6]",
    )
