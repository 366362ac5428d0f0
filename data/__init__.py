"""simcal.data: annotations, category statistics and bins, datasets, synthetic benchmark.

Everything here is importable without torch; :mod:`simcal.data.detection_dataset`
is the only module that needs it.
"""

from simcal.core.errors import InputError
from simcal.data.annotations import Annotations, load_annotations
from simcal.data.categories import CategoryMapping
from simcal.data.statistics import BIN_EDGES, category_statistics, frequency_of, instance_bin

__all__ = [
    "Annotations",
    "BIN_EDGES",
    "CategoryMapping",
    "InputError",
    "category_statistics",
    "frequency_of",
    "instance_bin",
    "load_annotations",
]
