"""Load and validate LVIS (v0.5, v1) and COCO instance annotation files.

A file is checked once, on load, so that later stages can trust it: every
problem a user can fix becomes one :class:`~simcal.core.errors.InputError`
sentence naming the file, the offending record and the fix.

Formats accepted:
- COCO ``instances_*.json``: images carry ``file_name``; ``iscrowd`` annotations
  with RLE (``counts`` as a list) are allowed.
- LVIS v0.5: like COCO plus ``neg_category_ids`` / ``not_exhaustive_category_ids``
  per image and ``frequency`` per category.
- LVIS v1: images carry ``coco_url`` instead of ``file_name``; the file name is the
  URL's last two path parts (``train2017/000000391895.jpg``), as detectron2 does.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simcal.core.errors import InputError, input_error
from simcal.core.jsonio import parse_json, read_bytes
from simcal.data.categories import CategoryMapping

if TYPE_CHECKING:
    import numpy as np

# simcal.data.geometry (numpy) is imported inside the checks that use it: `simcal --help` imports this module.
_TOP_KEYS = ("images", "annotations", "categories")
_FIX_ANN = "fix the annotation file (LVIS/COCO instance format)"


@dataclass
class Annotations:
    """A validated LVIS/COCO instance annotation file.

    Attributes:
        path: the file it came from.
        images: image records in file order; each has ``file_name`` (relative to the image root).
        annotations: instance records in file order.
        categories: category records in ascending id order.
        mapping: category id <-> contiguous label (1..C).
        info: the file's ``info`` dict ({} when absent).
        fingerprint: sha256 of the file bytes (stored in checkpoints and caches).
    """

    path: Path
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]
    mapping: CategoryMapping
    info: dict[str, Any]
    fingerprint: str
    is_lvis: bool
    _anns_by_image: dict[int, list[dict[str, Any]]] = field(default_factory=dict, repr=False)
    _image_by_id: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)

    def image(self, image_id: int) -> dict[str, Any]:
        return self._image_by_id[image_id]

    def annotations_of(self, image_id: int) -> list[dict[str, Any]]:
        """Annotations of one image, in file order ([] when it has none)."""
        return self._anns_by_image.get(image_id, [])

    def image_path(self, image: dict[str, Any], root: str | os.PathLike) -> Path:
        """The image file under ``root``, refused when a symbolic link leads it out of the (real) root.

        The name itself was checked at load (relative, no '..'); a link inside the
        root is the remaining way out, so the real paths are compared here.
        """
        path = Path(root) / image["file_name"]
        real_root = os.path.realpath(root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise input_error(
                path,
                f"is a symbolic link (or lies under one) that leads outside the image root {root} to {real}",
                "copy or link the images themselves into the image root, or pass the folder they are in",
            )
        return path


def _fingerprint(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def _safe_file_name(path: Path, img: dict[str, Any]) -> str:
    name = img.get("file_name")
    if name is None:
        url = img.get("coco_url")
        if not isinstance(url, str) or not url:
            raise input_error(path, f"image {img['id']} has neither 'file_name' nor 'coco_url'", _FIX_ANN)
        name = "/".join(url.rstrip("/").split("/")[-2:])
    if not isinstance(name, str) or not name:
        raise input_error(path, f"image {img['id']} has an empty or non-string file_name", _FIX_ANN)
    # Reject names that would read outside the image root, on any OS.
    unix = name.replace("\\", "/")
    if unix.startswith("/") or (len(unix) > 1 and unix[1] == ":") or posixpath.isabs(unix):
        raise input_error(
            path, f"image {img['id']} file_name {name!r} is an absolute path",
            "file names must be relative to the image root",
        )
    if ".." in unix.split("/"):
        raise input_error(
            path, f"image {img['id']} file_name {name!r} escapes the image root with '..'",
            "file names must stay inside the image root",
        )
    return posixpath.normpath(unix)


def valid_polygons(seg: Any) -> bool:
    """A non-empty list of polygons, each an even number >= 6 of finite coordinates."""
    return isinstance(seg, list) and bool(seg) and all(
        isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(_is_number(v) for v in p) for p in seg)


def _is_id(x: Any) -> bool:
    """Ids are JSON integers: a bool, float, list or object would be hashed, compared or crash as something else."""
    return type(x) is int


def _check_segmentation(path: Path, ann: dict[str, Any], img: dict[str, Any], rle_strings: list) -> None:
    """Polygons and RLE are checked against the image; compressed strings are queued for one batched check."""
    from simcal.data.geometry import COORD_TOLERANCE, counts_list_problem, polygon_problem

    seg = ann["segmentation"]
    aid = ann["id"]
    h, w = img["height"], img["width"]
    if isinstance(seg, list):
        problem = polygon_problem(seg, h, w)
        if problem is not None:
            raise input_error(
                path, f"annotation {aid} (image {img['id']}) has {problem}",
                f"polygons are lists of >= 3 x, y points within {int(COORD_TOLERANCE * 100)}% of the image size",
            )
        return
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if (
            not isinstance(size, list)
            or len(size) != 2
            or not all(_is_id(v) and v > 0 for v in size)
            or not isinstance(counts, (str, list))
        ):
            raise input_error(
                path, f"annotation {aid} has a bad RLE segmentation (need 'size': [h, w] and 'counts')", _FIX_ANN
            )
        if size != [h, w]:
            raise input_error(
                path, f"annotation {aid} RLE size {size} differs from its image's [height, width] [{h}, {w}]",
                _FIX_ANN,
            )
        problem = counts_list_problem(counts, h * w) if isinstance(counts, list) else None
        if problem is not None:
            raise input_error(path, f"annotation {aid} has {problem}", "encode masks with pycocotools.mask.encode")
        if isinstance(counts, str):
            rle_strings.append((aid, counts, h * w))
        return
    raise input_error(path, f"annotation {aid} segmentation is neither polygons nor RLE", _FIX_ANN)


def _check_rle_strings(path: Path, rle_strings: list) -> None:
    """Every compressed RLE of the file, decoded at once (see :func:`simcal.data.geometry.rle_strings_problem`)."""
    from simcal.data.geometry import rle_strings_problem

    if not rle_strings:
        return
    found = rle_strings_problem([s for _, s, _ in rle_strings], [p for _, _, p in rle_strings])
    if found is not None:
        aid = rle_strings[found[0]][0]
        raise input_error(
            path, f"annotation {aid} has a malformed RLE mask ({found[1]})", "encode masks with pycocotools.mask.encode"
        )


def _check_instance(path: Path, a: dict[str, Any], img: dict[str, Any]) -> None:
    """Box, area and crowd flag of one annotation (ids already checked)."""
    from simcal.data.geometry import box_problem

    problem = box_problem(a["bbox"], img["height"], img["width"], empty_ok=False)
    if problem is not None:
        raise input_error(path, f"annotation {a['id']} of image {img['id']}: {problem}", "fix or drop that annotation")
    area = a.get("area")
    if area is not None and not (_is_number(area) and area >= 0):
        raise input_error(
            path, f"annotation {a['id']} has area {area!r}", "area must be a finite number >= 0 (or left out)"
        )
    crowd = a.get("iscrowd")
    if crowd is not None and not (_is_id(crowd) and crowd in (0, 1)):
        raise input_error(path, f"annotation {a['id']} has iscrowd {crowd!r}", "iscrowd must be 0 or 1")


def _check_annotation(path: Path, a: dict[str, Any], image_by_id: dict, cat_ids: set, rle_strings: list) -> None:
    """Every check of one annotation record; the first problem becomes an InputError."""
    _require(path, a, ("image_id", "category_id", "bbox"), "annotation")
    for key in ("image_id", "category_id"):
        if not _is_id(a[key]):
            raise input_error(path, f"annotation {a['id']} {key} {a[key]!r} is not an integer", _FIX_ANN)
    img = image_by_id.get(a["image_id"])
    if img is None:
        raise input_error(path, f"annotation {a['id']} refers to unknown image id {a['image_id']}", _FIX_ANN)
    if a["category_id"] not in cat_ids:
        raise input_error(path, f"annotation {a['id']} refers to unknown category id {a['category_id']}", _FIX_ANN)
    _check_instance(path, a, img)
    if "segmentation" in a:
        _check_segmentation(path, a, img, rle_strings)


#: Annotations checked in bulk at a time (bounds the numpy copies of their boxes and polygon coordinates).
_BULK = 1 << 16


def _instances_in_bulk(path: Path, anns: list, image_by_id: dict, cat_ids: set) -> list | None:
    """The checks of :func:`_check_annotation` over all annotations with numpy, block by block: the compressed
    RLE strings to check (as the record-by-record pass queues them) when every record passes, else None, and
    the caller runs that pass for the message. An LVIS train file has over a million annotations: one
    Python call per record and coordinate took longer than reading the file."""
    rle_strings: list = []
    for start in range(0, len(anns), _BULK):
        block = anns[start : start + _BULK]
        if not _block_passes(path, block, image_by_id, cat_ids, rle_strings):
            return None
    return rle_strings


def _numbers(values: list) -> np.ndarray | None:
    """``values`` as float64 when every one is a JSON number (int or float, not bool) and finite, else None."""
    import numpy as np

    if not set(map(type, values)) <= {int, float}:
        return None
    arr = np.array(values, dtype=np.float64)
    return arr if np.isfinite(arr).all() else None


def _block_passes(path: Path, block: list, image_by_id: dict, cat_ids: set, rle_strings: list) -> bool:
    import numpy as np

    from simcal.data.geometry import COORD_TOLERANCE, boxes_outside

    if not all("image_id" in a and "category_id" in a and "bbox" in a for a in block):
        return False
    imgs, cats = [a["image_id"] for a in block], [a["category_id"] for a in block]
    if not (set(map(type, imgs)) <= {int} and set(map(type, cats)) <= {int}):
        return False
    if not (set(imgs) <= image_by_id.keys() and set(cats) <= cat_ids):
        return False
    boxes = [a["bbox"] for a in block]
    if not all(type(b) is list and len(b) == 4 for b in boxes):
        return False
    xywh = _numbers([v for b in boxes for v in b])
    if xywh is None:
        return False
    xywh = xywh.reshape(-1, 4)
    size = np.array([(image_by_id[i]["height"], image_by_id[i]["width"]) for i in imgs], dtype=np.float64)
    if (xywh[:, 2:] <= 0).any() or boxes_outside(xywh, size[:, 0], size[:, 1]).any():
        return False
    areas = [a["area"] for a in block if a.get("area") is not None]
    if areas and ((arr := _numbers(areas)) is None or (arr < 0).any()):
        return False
    crowds = [a["iscrowd"] for a in block if a.get("iscrowd") is not None]
    if not (set(map(type, crowds)) <= {int} and set(crowds) <= {0, 1}):
        return False
    polygons, where = [], []
    for k, a in enumerate(block):
        if "segmentation" not in a:
            continue
        seg = a["segmentation"]
        if type(seg) is list:
            if not seg or not all(type(p) is list and len(p) >= 6 and len(p) % 2 == 0 for p in seg):
                return False
            polygons.append(seg)
            where.append(k)
            continue
        try:  # RLE (COCO crowd regions): few; checked one by one, strings queued
            _check_segmentation(path, a, image_by_id[a["image_id"]], rle_strings)
        except InputError:
            return False
    if polygons:
        coords = _numbers([v for seg in polygons for p in seg for v in p])
        if coords is None:
            return False
        points = np.array([sum(len(p) for p in seg) // 2 for seg in polygons])
        h, w = np.repeat(size[where, 0], points), np.repeat(size[where, 1], points)
        x, y = coords[0::2], coords[1::2]  # every polygon has an even length: x, y alternate throughout
        tx, ty = COORD_TOLERANCE * w, COORD_TOLERANCE * h
        if (x < -tx).any() or (x > w + tx).any() or (y < -ty).any() or (y > h + ty).any():
            return False
    return True


def _check_negatives(path: Path, images: list[dict[str, Any]], present: dict[int, set]) -> None:
    """A category cannot be both annotated in an image and verified absent from it."""
    for img in images:
        both = [c for c in img.get("neg_category_ids", ()) if c in present.get(img["id"], ())]
        if both:
            raise input_error(
                path,
                f"image {img['id']} lists category {both[0]} in 'neg_category_ids' but annotates it",
                "a category is either annotated in an image or verified absent from it",
            )


def _check_unique(path: Path, records: list[dict[str, Any]], what: str) -> None:
    seen: set = set()
    for r in records:
        if not isinstance(r, dict) or "id" not in r:
            raise input_error(path, f"a record in '{what}' is missing key 'id'", _FIX_ANN)
        rid = r["id"]
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise input_error(path, f"'{what}' id {rid!r} is not an integer", _FIX_ANN)
        if rid in seen:
            raise input_error(path, f"duplicate id {rid} in '{what}'", "ids must be unique")
        seen.add(rid)


def _require(path: Path, rec: dict[str, Any], keys: tuple[str, ...], what: str) -> None:
    for k in keys:
        if k not in rec:
            raise input_error(path, f"{what} {rec.get('id', '?')} is missing key '{k}'", _FIX_ANN)


def parse_annotations(raw: bytes, path: str | os.PathLike) -> Annotations:
    """Validate the bytes of an annotation file; ``path`` only names it in messages."""
    path = Path(path)
    d = parse_json(raw, path, "an LVIS/COCO annotation file", "re-download or regenerate it")
    if not isinstance(d, dict):
        raise input_error(path, "top level is not a JSON object", _FIX_ANN)
    for k in _TOP_KEYS:
        if k not in d:
            raise input_error(path, f"is missing top-level key '{k}'", _FIX_ANN)
        if not isinstance(d[k], list):
            raise input_error(path, f"top-level '{k}' is not a list", _FIX_ANN)
    images, anns, cats = d["images"], d["annotations"], d["categories"]
    for recs, what in ((cats, "categories"), (images, "images"), (anns, "annotations")):
        _check_unique(path, recs, what)

    if not cats:
        raise input_error(path, "has an empty 'categories' list", "list every category the annotations use")
    cat_ids = set()
    for c in cats:
        _require(path, c, ("name",), "category")
        cat_ids.add(c["id"])
    is_lvis = False
    for img in images:
        _require(path, img, ("height", "width"), "image")
        h, w = img["height"], img["width"]
        if not (_is_id(h) and _is_id(w) and h > 0 and w > 0):
            raise input_error(path, f"image {img['id']} has a non-positive or non-integer height/width", _FIX_ANN)
        img["file_name"] = _safe_file_name(path, img)
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            if key in img:
                is_lvis = True
                ids = img[key]
                if not isinstance(ids, list):
                    raise input_error(path, f"image {img['id']} '{key}' is not a list", _FIX_ANN)
                not_int = [c for c in ids if not _is_id(c)]
                if not_int:
                    raise input_error(
                        path, f"image {img['id']} '{key}' holds {not_int[0]!r}, not a category id", _FIX_ANN
                    )
                unknown = [c for c in ids if c not in cat_ids]
                if unknown:
                    raise input_error(
                        path,
                        f"image {img['id']} '{key}' names unknown category id {unknown[0]}",
                        "every id must be in 'categories'",
                    )
    image_by_id = {img["id"]: img for img in images}
    rle_strings = _instances_in_bulk(path, anns, image_by_id, cat_ids)
    if rle_strings is None:  # something is unusual: the record-by-record pass names the first problem
        rle_strings = []
        for a in anns:
            _check_annotation(path, a, image_by_id, cat_ids, rle_strings)
    _check_rle_strings(path, rle_strings)
    by_image: dict[int, list[dict[str, Any]]] = {}
    present: dict[int, set] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
        present.setdefault(a["image_id"], set()).add(a["category_id"])
    _check_negatives(path, images, present)
    cats_sorted = sorted(cats, key=lambda c: c["id"])
    return Annotations(
        path=path,
        images=images,
        annotations=anns,
        categories=cats_sorted,
        mapping=CategoryMapping.from_categories(cats_sorted),
        info=d.get("info") if isinstance(d.get("info"), dict) else {},
        fingerprint=_fingerprint(raw),
        is_lvis=is_lvis,
        _anns_by_image=by_image,
        _image_by_id=image_by_id,
    )


def load_annotations(path: str | os.PathLike) -> Annotations:
    """Read and validate an annotation file; raises :class:`InputError` on any problem."""
    raw = read_bytes(path, "an annotation json file")
    return parse_annotations(raw, path)


__all__ = ["Annotations", "InputError", "load_annotations", "parse_annotations"]
