"""simcal.detector: torchvision Mask R-CNN builders, checkpoints and baseline training."""
