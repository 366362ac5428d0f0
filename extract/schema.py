"""The feature-cache schema: names, dtypes and row encodings, in one place (docs/design.md §4).

The cache is one component in this folder: this module says what a cache holds,
:mod:`~simcal.extract.store` writes it, :mod:`~simcal.extract.reader` and
:mod:`~simcal.extract.mapped_rows` read its rows, :mod:`~simcal.extract.cache_tools`
inspects, verifies and exports it.

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
id, name, instance_count, image_count, frequency), ``bins`` (the instance-count bin
scheme, ``lvis`` or ``coco-lt``, that per-bin reports use), ``params`` (every extraction
parameter), ``counts``, ``integrity`` (size and crc32c of every file, or of every dataset of
an h5 export: extract/integrity.py), and ``complete`` -- written last, ``true`` only when the
whole cache is consistent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from simcal.core.errors import input_error

#: 2: every file's crc32c in attrs['integrity'] (extract/integrity.py); 3: a crc32c after each features chunk
SCHEMA_VERSION = 3

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
             "bins", "params", "counts", "integrity", "complete")
#: Everything but the features: a few bytes a row, read whole by calibration (and checked whole first).
SMALL_ARRAYS = ("labels", "ious", "boxes", "image_index", "is_gt", "flipped", "feature_scale", "image_ids", "index",
                "detector_head")
#: Every row array a cache may hold, in export order (``feature_scale`` only with int8 features).
ROW_NAMES = ("features", "feature_scale", "labels", "ious", "boxes", "image_index", "is_gt", "flipped")


def row_specs(feature_dtype: str, dim: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, trailing shape) of every row array of a cache storing features as ``feature_dtype``."""
    specs = dict(ROW_ARRAYS)
    if feature_dtype == "int8":
        specs["features"] = ("int8", ("D",))
        specs["feature_scale"] = ("float32", ())
    return {name: (dt, tuple(dim if t == "D" else t for t in trail)) for name, (dt, trail) in specs.items()}


def empty_rows(feature_dtype: str, dim: int) -> dict[str, np.ndarray]:
    """Zero-row arrays of every row array (a part whose images gave no rows)."""
    return {name: np.zeros((0, *tail), dtype=dt) for name, (dt, tail) in row_specs(feature_dtype, dim).items()}


def encode_features(x: np.ndarray, feature_dtype: str) -> dict[str, np.ndarray]:
    """(R, D) float32 features -> the stored arrays: float16, or symmetric per-row int8 with a scale.

    int8: ``row = q * scale``, ``scale = max|row| / 127`` (1 for an all-zero row).
    """
    if feature_dtype == "float16":
        return {"features": x.astype(np.float16)}
    if feature_dtype != "int8":
        raise ValueError(f"unknown feature dtype {feature_dtype!r}")
    scale = np.abs(x).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return {"features": q, "feature_scale": scale.astype(np.float32)}

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
        self._intact: set[str] = set()  # arrays whose checksums require_intact has checked ("*": all)
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
        if require_complete:
            problems = self.structure_problems()
            if problems:
                raise input_error(self.path, f"is a damaged cache: {problems[0]}",
                                  "run 'simcal cache verify' for every problem, and extract it again")

    # -- integrity (extract/integrity.py)
    def structure_problems(self) -> list[str]:
        """What metadata and ``stat`` reveal, without reading data: attributes against array shapes,
        arrays present, recorded files present with their sizes."""
        from simcal.extract.integrity import missing_or_resized

        a, problems = self.attrs, []
        record = a.get("integrity")
        if not isinstance(record, dict) or not isinstance(record.get("files" if self._h5 is None else "arrays"), dict):
            return ["it has no integrity record"]
        if self._h5 is None:
            problems += missing_or_resized(self.path, record["files"])
        cats, dim = a.get("categories"), a.get("dim")
        if not isinstance(cats, list) or not cats or not isinstance(dim, int) or isinstance(dim, bool):
            return problems + ["its 'categories' or 'dim' attribute is malformed"]
        try:
            rows = self._root["labels"].shape[0]
            shapes = {name: tuple(self._root[name].shape) for name in ROW_ARRAYS}
            ptr = {name: tuple(self._root["index"][name].shape) for name in INDEX_ARRAYS}
            images = self._root["image_ids"].shape[0]
            cls = tuple(self._root["detector_head"]["cls_score.weight"].shape)
        except (KeyError, ValueError, OSError) as e:
            return problems + [f"an array is missing or unreadable ({type(e).__name__}: {e})"]
        if shapes["features"] != (rows, dim):
            problems.append(f"'features' is {shapes['features']}, the attributes say ({rows}, {dim})")
        problems += [f"'{n}' has {sh[0]} rows, 'labels' has {rows}" for n, sh in shapes.items() if sh[0] != rows]
        if ptr["image_row_ptr"] != (images + 1,) or ptr["class_row_ptr"] != (len(cats) + 2,):
            problems.append("the index does not match the images and categories")
        if cls[0] != len(cats) + 1:
            problems.append(f"the detector head scores {cls[0] - 1} classes, the attributes list {len(cats)}")
        return problems

    def corrupt_files(self, names=None) -> list[str]:
        """crc32c problems of the recorded files of the arrays/groups ``names`` (all when None); reads them."""
        from simcal.extract.integrity import array_crc, corrupted, under

        record = self.attrs.get("integrity") or {}
        if self._h5 is None:
            return corrupted(self.path, record.get("files", {}), names)
        problems = []
        for name, crc in record.get("arrays", {}).items():
            if under(name, names) and array_crc(self._h5[name]) != crc:
                problems.append(f"dataset {name} does not match its crc32c")
        return problems

    def require_intact(self, names=None) -> None:
        """Refuse (InputError) a cache whose files of ``names`` (all when None) changed since extraction.

        Each array is checked once per open cache: the calibration command and the reader it builds
        both ask for the labels, which are read from disk once.
        """
        if "*" in self._intact:
            return
        todo = None if names is None else [n for n in names if n not in self._intact]
        if todo == []:
            return
        problems = self.corrupt_files(todo)
        if problems:
            raise input_error(self.path, f"is a damaged cache: {problems[0]}",
                              "run 'simcal cache verify' for every problem, and extract it again")
        self._intact.update(["*"] if todo is None else todo)

    def file_record(self, rel: str) -> tuple[int, int] | None:
        """(size, crc32c) recorded for the store file ``rel`` (None for an h5 export or an unknown file)."""
        files = (self.attrs.get("integrity") or {}).get("files") or {}
        return tuple(files[rel]) if rel in files else None

    def __getitem__(self, name: str):
        return self._root[name]

    def detector_head(self) -> dict[str, np.ndarray]:
        """The detector's fc6 / fc7 / cls_score weights stored at extraction."""
        return {k: np.asarray(self._root["detector_head"][k][:]) for k in HEAD_ARRAYS}

    def index(self, name: str) -> np.ndarray:
        return np.asarray(self.index_array(name)[:])

    def index_array(self, name: str) -> Any:
        """The stored index array ``name`` unread (a zarr array or h5py dataset: read it by slices)."""
        return self._root["index"][name] if self._h5 is None else self._h5["index"][name]

    @property
    def num_rows(self) -> int:
        return int(self._root["labels"].shape[0])

    @property
    def dim(self) -> int:
        return int(self.attrs["dim"])

    @property
    def bins(self) -> str:
        """The instance-count bin scheme of per-bin reports (``lvis`` for caches that predate the attribute)."""
        return str(self.attrs.get("bins", "lvis"))

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()


def _h5_attr(v: Any) -> Any:
    """The exporter stores every attribute as a JSON string (HDF5 attributes hold no nested values)."""
    import json

    return json.loads(v.decode() if isinstance(v, bytes) else v)
