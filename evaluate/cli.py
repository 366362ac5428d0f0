"""``simcal evaluate``: LVIS-protocol metrics with the paper's bins (issue [2/6])."""

from simcal.pending import add_pending_command


def add_parser(sub) -> None:
    add_pending_command(
        sub, "evaluate", "LVIS AP, APr/c/f and the paper's AP1-AP4 bins",
        "Evaluate LVIS results json against ground truth with the LVIS protocol, plus the\n"
        "paper's instance-count bins from the training annotations.\n"
        "Inputs: --gt VAL.json --results RESULTS.json --train-ann TRAIN.json. Output: METRICS.json.",
        "[2/6]",
    )
