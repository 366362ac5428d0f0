"""SimCal: calibrating the classification head of long-tail instance segmentation detectors."""

__version__ = "0.1.0"
