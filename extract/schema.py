"""The feature-cache schema: the one module ``extract`` writes and ``calibrate`` reads.

A cache is a zarr v3 group (directory store, sharded) or its single-file h5py
export, with the same names:

Arrays, one row per stored RoI, rows grouped by image in image-index order:
    features      (R, D)  float16 (int8 with ``--dtype int8``)  the RoIAlign tap, flattened
    feature_scale (R,)    float32  int8 only: row = int8 * scale
    labels        (R,)    int16    0 = background, else contiguous class 1..C
    ious          (R,)    float32  max IoU with a GT box of the (possibly flipped) view
    boxes         (R, 4)  float32  xyxy in original-image pixels, of the view the row came from
    image_index   (R,)    int32    index into image_ids
    is_gt         (R,)    bool     the row is a GT box added as a proposal
    flipped       (R,)    bool     the row comes from the horizontally flipped view
    image_ids     (I,)    int64    dataset image id of each image index

Group ``index/`` (CSR, int64):
    image_row_ptr   (I+1)  rows of image i are [image_row_ptr[i], image_row_ptr[i+1])
    class_image_ptr (C+2)  images holding rows labelled c: class_images[class_image_ptr[c]:...[c+1]]
    class_images           (ascending image index within each class; c = 0 is background)
    class_row_ptr   (C+2)  rows labelled c: class_rows[class_row_ptr[c]:class_row_ptr[c+1]]
    class_rows             (ascending row within each class)

Group ``detector_head/`` (float32): the detector's own ``fc6.weight``, ``fc6.bias``,
``fc7.weight``, ``fc7.bias``, ``cls_score.weight``, ``cls_score.bias``, so the ``3fc_ft``
head can start from the detector's classifier with the cache alone.

Attributes (``ATTR_KEYS``): ``schema_version``, ``detector_fingerprint``,
``annotation_fingerprint``, ``tap``, ``dim``, ``categories`` (entry k-1 for label k:
id, name, instance_count, image_count, frequency), ``params`` (every extraction
parameter), ``counts``, and ``complete`` -- written last, ``true`` only when the
whole cache is consistent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from simcal.data.errors import input_error

SCHEMA_VERSION = 1

#: name -> (dtype, trailing shape) for row arrays; ``D`` is filled in per cache.
ROW_ARRAYS: dict[str, tuple[str, tuple]] = {
    "features": ("float16", ("D",)),
    "labels": ("int16", ()),
    "ious": ("float32", ()),
    "boxes": ("float32", (4,)),
    "image_index": ("int32", ()),
    "is_gt": ("bool", ()),
    "flipped": ("bool", ()),
}
HEAD_ARRAYS = ("fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias", "cls_score.weight", "cls_score.bias")
INDEX_ARRAYS = ("image_row_ptr", "class_image_ptr", "class_images", "class_row_ptr", "class_rows")
ATTR_KEYS = ("schema_version", "detector_fingerprint", "annotation_fingerprint", "tap", "dim", "categories",
             "params", "counts", "complete")

#: The tap every head reads: the box head's input, RoIAlign output flattened (paper Fig. 4b heads).
TAP = "roi_heads.box_roi_pool"


class Cache:
    """Read access to a complete cache (zarr directory or .h5 file), format-independent.

    ``cache["labels"]`` is an array-like supporting slicing (zarr array or h5py
    dataset); ``cache.index("class_rows")`` likewise; ``cache.attrs`` a plain dict.
    """

    def __init__(self, path: str | os.PathLike, require_complete: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise input_error(self.path, "does not exist", "run 'simcal extract' first")
        self._h5 = None
        if self.path.is_file():
            import h5py

            try:
                self._h5 = h5py.File(self.path, "r")
            except OSError as e:
                raise input_error(self.path, f"is not a readable HDF5 cache ({e})")
            self._root = self._h5
            self.attrs = {k: _h5_attr(v) for k, v in self._h5.attrs.items()}
        else:
            import zarr

            try:
                self._root = zarr.open_group(str(self.path), mode="r")
            except Exception as e:  # zarr raises several types for "not a group"
                raise input_error(self.path, f"is not a zarr feature cache ({type(e).__name__})",
                                  "pass a folder written by 'simcal extract'")
            self.attrs = dict(self._root.attrs)
        if self.attrs.get("schema_version") != SCHEMA_VERSION:
            raise input_error(self.path, f"has cache schema {self.attrs.get('schema_version')!r}, this SimCal "
                              f"reads {SCHEMA_VERSION}", "re-extract it")
        if require_complete and self.attrs.get("complete") is not True:
            raise input_error(self.path, "is an incomplete cache (extraction did not finish)",
                              "re-run the same 'simcal extract' command to finish it")

    def __getitem__(self, name: str):
        return self._root[name]

    def detector_head(self) -> dict[str, np.ndarray]:
        """The detector's fc6 / fc7 / cls_score weights stored at extraction."""
        return {k: np.asarray(self._root["detector_head"][k][:]) for k in HEAD_ARRAYS}

    def index(self, name: str) -> np.ndarray:
        return np.asarray(self._root["index"][name][:]) if self._h5 is None else self._h5["index"][name][:]

    @property
    def num_rows(self) -> int:
        return int(self._root["labels"].shape[0])

    @property
    def dim(self) -> int:
        return int(self.attrs["dim"])

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()


def _h5_attr(v: Any) -> Any:
    """The exporter stores every attribute as a JSON string (HDF5 attributes hold no nested values)."""
    import json

    return json.loads(v.decode() if isinstance(v, bytes) else v)
