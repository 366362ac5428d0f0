"""simcal.detector: torchvision Mask R-CNN builders, checkpoints and baseline training.

    from simcal.detector import build, load_checkpoint
    model = build("tiny", num_classes=42)
    model, ckpt = load_checkpoint("runs/demo/baseline_tiny.pth")

The names are resolved on first use, so importing a stage's CLI (``simcal --help``) does not import torch.
"""

from importlib import import_module

_EXPORTS = {"build": "simcal.detector.builders", "load_checkpoint": "simcal.detector.checkpoint",
            "read_checkpoint": "simcal.detector.checkpoint", "save_checkpoint": "simcal.detector.checkpoint"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'simcal.detector' has no attribute {name!r}")
