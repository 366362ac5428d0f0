"""``simcal train``: baseline Mask R-CNN training (flags only; the loop is in train.py)."""

from __future__ import annotations

import argparse

from simcal.core.checks import FRACTION, FRACTION_POSITIVE, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT, arg, arg_list
from simcal.core.cli_args import add_amp_arg, add_dataset_args, add_device_arg, add_seed_arg, describe
from simcal.core.names import ARCHS, IMAGE_SAMPLERS, LOSSES
from simcal.detector.convert import TEST_SIZE


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_dataset_args(p, "train", "training data")

    m = p.add_argument_group("model")
    m.add_argument("--arch", choices=tuple(ARCHS), default="tiny", help="(default tiny) " + describe(ARCHS))
    m.add_argument("--class-agnostic", action="store_true",
                   help="one box regressor and one mask channel for all classes (the paper's r50-ag)")
    m.add_argument("--backbone-weights", metavar="FILE",
                   help="r50_fpn and r50_cascade only: local ImageNet ResNet-50 state_dict (nothing is downloaded)")

    o = p.add_argument_group("optimisation (SGD, linear warm-up, two x0.1 steps)")
    o.add_argument("--iters", type=arg(POSITIVE_INT), default=3000, help="training iterations (default 3000)")
    o.add_argument("--batch-size", type=arg(POSITIVE_INT), default=16,
                   help="images per iteration over all processes (default 16)")
    o.add_argument("--lr", type=arg(POSITIVE), default=0.02, help="base learning rate (default 0.02)")
    o.add_argument("--momentum", type=arg(FRACTION), default=0.9, help="SGD momentum (default 0.9)")
    o.add_argument("--weight-decay", type=arg(NONNEG), default=1e-4, help="(default 1e-4)")
    o.add_argument("--warmup", type=arg(NONNEG_INT), default=200, help="linear warm-up iterations (default 200)")
    o.add_argument("--lr-steps", type=arg_list(FRACTION), default=[0.75, 0.92],
                   help="fractions of --iters where lr drops x0.1 (default 0.75,0.92)")
    o.add_argument("--clip-grad", type=arg(NONNEG), default=10.0, help="max gradient norm, 0 = off (default 10)")
    o.add_argument("--flip", type=arg(FRACTION), default=0.5, help="horizontal flip probability (default 0.5)")

    lt = p.add_argument_group("long-tail strategies (paper Table 2)")
    lt.add_argument("--sampler", choices=tuple(IMAGE_SAMPLERS), default="uniform",
                    help="image sampling (default uniform). " + describe(IMAGE_SAMPLERS))
    lt.add_argument("--rfs-t", type=arg(FRACTION_POSITIVE), default=0.001,
                    help="repeat-factor threshold t (default 0.001)")
    lt.add_argument("--cls-loss", choices=tuple(LOSSES), default="ce",
                    help="second-stage classification loss (default ce). " + describe(LOSSES))
    lt.add_argument("--focal-gamma", type=arg(NONNEG), default=2.0, help="focal loss gamma (default 2)")
    lt.add_argument("--reweight-n", type=arg(POSITIVE), default=None,
                    help="N in w_j = N / N_j (default: median class instance count)")
    lt.add_argument("--margin-k", type=arg(NONNEG), default=None,
                    help="K in D_j = K / N_j^(1/4) (default: largest margin 0.5)")

    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, metavar="CKPT", help="final checkpoint path (e.g. runs/tiny.pth)")
    add_seed_arg(r, "initialisation, image order and flips")
    r.add_argument("--resume", action="store_true", help="continue from CKPT.resume.pth after an interruption")
    r.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    r.add_argument("--checkpoint-every", type=arg(POSITIVE_INT), default=250, help="iterations between resume points")
    r.add_argument("--log-every", type=arg(POSITIVE_INT), default=20, help="iterations between JSONL log lines")
    r.add_argument("--workers", type=arg(NONNEG_INT), default=None,
                   help="data-loading processes per rank (default: 0 on CPU, where they compete with the "
                   "compute threads for the cores; 4 on CUDA)")
    add_device_arg(r)
    add_amp_arg(r, "auto", "the detector's forward and backward (CUDA only)")
    return p


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a baseline Mask R-CNN (tiny or r50_fpn)",
        description="Train a torchvision Mask R-CNN on LVIS/COCO-format data. Inputs: --data DIR (from "
        "'simcal data synth') or --ann FILE --images DIR. Outputs: CKPT (self-describing: arch, "
        "weights, category mapping and statistics, annotation fingerprint, these arguments), "
        "CKPT.resume.pth while running, CKPT.log.jsonl (losses, lr, speed), CKPT.config.json and "
        "CKPT.manifest.json (written last: the data and training arguments it was made from). "
        "Data-parallel: 'torchrun --nproc_per_node N -m simcal train ...' (gloo on CPU, nccl on GPU).",
    )
    add_train_arguments(p)

    def run(args: argparse.Namespace) -> int:
        from simcal.detector.train import main

        return main(args)

    p.set_defaults(func=run)
    _add_convert_parser(sub)


def _add_convert_parser(sub) -> None:
    c = sub.add_parser(
        "convert",
        help="convert a detector trained in detectron2 or mmdetection (incl. the SimCal release) into a SimCal "
        "checkpoint",
        description=(
            "Convert a trained R50-FPN Mask R-CNN from another framework.\n\n"
            "Inputs: SRC (a detectron2 or mmdetection v2/v3 checkpoint, or an mmdetection 1.x one\n"
            "such as the SimCal authors' release, as --from below) and --ann TRAIN.json (the\n"
            "annotations it was trained on: class count and names, category order, statistics);\n"
            "with --from mmdet1 optionally --head, the release's calibrated head.\n"
            "Output: CKPT, a checkpoint like 'simcal train' writes (weights in torchvision's layout,\n"
            "background first), whose builder keywords reproduce the source's test behaviour where\n"
            "torchvision's differs; with --head also HEAD.pth (--head-out), a head like 'simcal\n"
            "calibrate' writes, bound to CKPT.\n\n"
            "--from detectron2: a model-zoo .pkl (read without running pickled code) or a\n"
            "  Checkpointer .pth. Checked: every weight's name and shape, the class count against\n"
            "  --ann. Carries: the MSRA ResNet (stride in the 1x1 convs), BGR 0-255 input with\n"
            "  detectron2's pixel mean (the stem is turned to take RGB), unrounded anchors at fixed\n"
            "  strides, ROIAlignV2, no small-box filter, half-up resize, grid_sample mask pasting.\n"
            "--from mmdet: an mmdetection v2 or v3 .pth (torch.load weights_only; mmengine's\n"
            "  bookkeeping is read inert, never imported). Checked: every weight's name and shape,\n"
            "  a sigmoid RPN, the class count against --ann and, when the file lists them (meta\n"
            "  CLASSES or dataset_meta classes), the class names in category-id order; when the\n"
            "  file carries its config (parsed, never run): style='pytorch', ImageNet RGB\n"
            "  normalisation, RoIAlign aligned=True sampling_ratio=0, standard anchors and box\n"
            "  deltas (without a config these are assumed, and the output line says so).\n"
            "  Carries: detectron2's anchors, RoIAlign, small-box and mask-paste switches, the\n"
            "  half-up resize with OpenCV's 8-bit bilinear (mmcv.imrescale), and torchvision's\n"
            "  strides and normalisation, which style='pytorch' shares.\n"
            "--from mmdet1: an mmdetection 1.x .pth, e.g. the SimCal authors' epoch_12.pth of\n"
            "  mask_rcnn_r50_fpn_1x_lvis_clswise or _agnostic (r50, r50-ag). Checked: every weight's\n"
            "  name and shape (heads with background first, class-specific or class-agnostic), a\n"
            "  sigmoid RPN, the class count against --ann and, when the file lists them (meta\n"
            "  CLASSES), the class names in category-id order; when the file carries its config:\n"
            "  style='pytorch', ImageNet RGB normalisation, RoIAlign sample_num=2, anchors of scale 8\n"
            "  at strides 4..64, standard box deltas. Carries: mmdetection 1.x's '+1' pixel convention\n"
            "  (rounded anchors, box decoding, RPN, NMS and RoIAlign end, FPN levels by\n"
            "  sqrt((w+1)(h+1)) from 56), its resize (int(x*s+0.5), one scale factor s, detections\n"
            "  mapped to the original image by s before their NMS), score threshold 0 and mask pasting\n"
            "  on integer boxes.\n"
            "  --head SIMCAL_HEAD.pth --head-out HEAD.pth: also convert the release's calibrated head\n"
            "  (3fc_ft.pth: feat_classifier.fc1/fc2/fc_classifier, or a simple2fc head:\n"
            "  feat_extractor.fc1/fc2) into a head for 'simcal infer --head-ckpt HEAD.pth' with CKPT,\n"
            "  which refuses it with any other detector. Checked: its names, its input width against\n"
            "  the RoI features and its outputs against the classes. The release's dual head replaces\n"
            "  the scores of classes with fewer than 100 train instances: 'simcal infer --mode sel\n"
            "  --T 99'.\n\n"
            "Bad input: one sentence on stderr, exit code 2, nothing written."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("src", metavar="SRC", help="the source checkpoint")
    c.add_argument("--from", dest="source", choices=("detectron2", "mmdet", "mmdet1"), required=True,
                   help="the framework that wrote SRC: detectron2, mmdet (mmdetection v2/v3) or mmdet1 "
                   "(mmdetection 1.x, the SimCal release); see above")
    c.add_argument("--ann", required=True, metavar="TRAIN.json", help="the training annotations (LVIS/COCO json)")
    c.add_argument("--out", required=True, metavar="CKPT", help="the SimCal checkpoint to write")
    c.add_argument("--arch", choices=("r50_fpn",), default="r50_fpn", help="the architecture (default r50_fpn)")
    c.add_argument("--class-agnostic", choices=("auto", "on", "off"), default="auto",
                   help="auto (default): as the source's box and mask heads are")
    c.add_argument("--test-size", nargs=2, type=arg(POSITIVE_INT), metavar=("SHORT", "MAX"), default=TEST_SIZE,
                   help="test-time resize: shorter side to SHORT unless the longer passes MAX, as the source's "
                   "config sets it (detectron2 INPUT.MIN_SIZE_TEST/MAX_SIZE_TEST, mmdetection's test Resize "
                   "scale; default %(default)s, both frameworks' LVIS setting)")
    c.add_argument("--head", metavar="SIMCAL_HEAD.pth",
                   help="--from mmdet1 only: the release's calibrated head file (3fc_ft.pth), converted too")
    c.add_argument("--head-out", metavar="HEAD.pth", help="with --head: the SimCal head checkpoint to write")

    def run(args: argparse.Namespace) -> int:  # 'simcal convert' itself runs calibrate/cli.py's, with --head
        from simcal.detector.convert import main

        return main(args)

    c.set_defaults(func=run)
