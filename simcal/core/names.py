"""The names every command and implementation agree on, each with what it means.

One place per concept: a CLI offers ``choices=tuple(HEADS)`` and the implementation
dispatches on the same keys, so adding a head, sampler or loss touches this file
and the module that implements it, nothing else.
"""

from __future__ import annotations

#: Detector architectures (simcal.detector.builders).
ARCHS = {
    "tiny": "CPU-sized Mask R-CNN for the synthetic benchmark (128-px images, FPN-64)",
    "r50_fpn": "the paper's Mask R-CNN: ResNet-50-FPN, 12544-d box-head input",
    "tiny_cascade": "tiny with Cascade R-CNN's three box stages (IoU 0.5/0.6/0.7, class-agnostic boxes)",
    "r50_cascade": "r50_fpn with Cascade R-CNN's three box stages (the paper's Table 6 runs HTC on it)",
}
#: The cascade architectures and the Mask R-CNN each extends (simcal.detector.cascade).
CASCADE_OF = {"tiny_cascade": "tiny", "r50_cascade": "r50_fpn"}

#: Calibration heads over the cached tap (simcal.calibrate.heads).
HEADS = {
    "linear": "D -> C+1",
    "2fc_rand": "D -> h -> C+1, random init",
    "3fc_rand": "D -> h -> h -> C+1, random init",
    "3fc_ft": "D -> h -> h -> C+1, initialised from the detector's fc6, fc7, cls_score",
    "2fc_ncm": "cosine nearest class mean on the detector's frozen fc6 -> fc7",
}
#: Heads that start from the detector's own layers (they need its fc6/fc7/cls_score weights).
HEADS_FROM_DETECTOR = ("3fc_ft", "2fc_ncm")

#: Batch samplers over a feature cache (simcal.calibrate.samplers).
SAMPLERS = {
    "bilevel": "SimCal: classes, then an image per class, then its rows plus background",
    "random": "rows uniformly (instance level, long-tailed)",
    "class_balanced": "classes uniformly, one row each, plus background",
    "repeat_factor": "images by their LVIS repeat factor, their rows plus background",
}

#: Image samplers for detector training (simcal.detector.samplers).
IMAGE_SAMPLERS = {
    "uniform": "every image equally often",
    "repeat_factor": "LVIS repeat-factor sampling (the paper's IS)",
}

#: Classification losses (simcal.detector.losses), for training and calibration alike.
LOSSES = {
    "ce": "softmax cross-entropy (paper Eq. 1)",
    "reweight": "loss re-weighting by inverse class frequency (LR)",
    "focal": "focal loss (FL)",
    "margin": "class-aware margin loss (CM)",
}

#: How inference combines the detector's and the calibrated head's scores (simcal.infer.scoring).
MODES = {
    "orig": "the detector's own head",
    "cal": "the calibrated head alone",
    "sel": "paper Eq. 2: calibrated scores for classes with N_z <= T, original otherwise",
    "avg": "the mean of both heads' probabilities, every class",
}

#: Post-hoc rules on the detector's own head (simcal.infer.scoring).
POSTHOC = {
    "none": "no rule",
    "norcal": "p_z / N_z^gamma, renormalised",
    "logit_adjust": "l_z - gamma log prior_z",
    "tau_norm": "classifier rows / ||W_z||^tau",
}

#: Where calibration keeps the cached features (simcal.extract.reader).
PRELOAD = {
    "auto": "ram when the features fit comfortably, else none",
    "none": "read each batch's rows from the store",
    "ram": "copy the features into memory once",
    "gpu": "copy the features onto the GPU once",
}

#: Instance-count bin schemes: lower edges of bins 2, 3, 4 (paper Table 1).
BIN_EDGES: dict[str, tuple[int, int, int]] = {
    "lvis": (10, 100, 1000),
    "coco-lt": (20, 400, 8000),
}

#: Storage types of cached features (simcal.extract.schema).
FEATURE_DTYPES = ("float16", "int8")

#: ``--amp``: mixed precision on, off, or on where CUDA runs.
AMP = ("auto", "on", "off")

#: Synthetic benchmark presets (simcal.data.synthetic.PRESETS holds their sizes).
SYNTH_PRESETS = {
    "default": "42 classes, 128-px images (docs/design.md §8.1)",
    "quick": "12 classes, 64-px images, every bin present",
    "smoke": "quick's train split with 2 val instances per class",
}
