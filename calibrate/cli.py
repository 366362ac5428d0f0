"""``simcal calibrate``: retrain the classification head from the cache (issue [5/6])."""

from simcal.pending import add_pending_command


def add_parser(sub) -> None:
    add_pending_command(
        sub, "calibrate", "retrain the classification head with bi-level sampling",
        "Train a small classification head (linear, 2fc, 3fc) on class-balanced batches\n"
        "drawn by bi-level sampling straight from a feature cache.\n"
        "Input: --cache CACHE.zarr. Output: HEAD.pth (or a sweep directory).",
        "[5/6]",
    )
