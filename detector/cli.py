"""``simcal train``: baseline Mask R-CNN training (issue [3/6])."""

from simcal.pending import add_pending_command


def add_parser(sub) -> None:
    add_pending_command(
        sub, "train", "train a baseline Mask R-CNN (tiny or r50_fpn)",
        "Train a torchvision Mask R-CNN on LVIS/COCO-format data.\n"
        "Inputs: --data DIR (from 'simcal data synth') or --train-ann FILE --images DIR.\n"
        "Output: a self-describing checkpoint (arch, weights, category mapping).",
        "[3/6]",
    )
