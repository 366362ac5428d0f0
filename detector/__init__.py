"""simcal.detector: torchvision Mask R-CNN builders, checkpoints and baseline training.

    from simcal.detector import build, load_checkpoint
    model = build("tiny", num_classes=42)
    model, ckpt = load_checkpoint("runs/demo/baseline_tiny.pth")
"""

from simcal.detector.builders import build
from simcal.detector.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint

__all__ = ["build", "load_checkpoint", "read_checkpoint", "save_checkpoint"]
