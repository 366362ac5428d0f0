"""``simcal infer``: dual-head inference (issue [6/6])."""

from simcal.pending import add_pending_command


def add_parser(sub) -> None:
    add_pending_command(
        sub, "infer", "run the detector with calibrated head(s) (dual head)",
        "Reattach calibrated heads beside the original classifier and write LVIS results.\n"
        "Inputs: --checkpoint CKPT, --head HEAD.pth, a dataset. Output: RESULTS.json.",
        "[6/6]",
    )
