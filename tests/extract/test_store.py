"""The cache writer's pieces on their own: the CSR index, shard-aligned appends, consolidation that drops its parts."""

import numpy as np
import pytest
import zarr

from simcal.extract.extract import image_rows, part_arrays
from simcal.extract.schema import SCHEMA_VERSION, TAP
from simcal.extract.store import ShardAlignedWriter, build_index, consolidate, parts_dir, write_part


def _naive_index(labels, image_index, num_images, num_classes):
    """The index by definition, one class and one image at a time."""
    labels, image_index = np.asarray(labels, np.int64), np.asarray(image_index, np.int64)
    rows = [np.flatnonzero(labels == c) for c in range(num_classes + 1)]
    imgs = [np.unique(image_index[r]) for r in rows]
    return {
        "image_row_ptr": np.searchsorted(image_index, np.arange(num_images + 1)),
        "class_row_ptr": np.concatenate([[0], np.cumsum([len(r) for r in rows])]),
        "class_rows": np.concatenate(rows),
        "class_image_ptr": np.concatenate([[0], np.cumsum([len(i) for i in imgs])]),
        "class_images": np.concatenate(imgs),
    }


@pytest.mark.parametrize("seed", range(12))
def test_build_index_is_the_index_by_definition(seed):
    rng = np.random.default_rng(seed)
    images, classes = int(rng.integers(1, 40)), int(rng.integers(1, 30))
    per_image = rng.integers(0, 9, images)  # images without rows too
    image_index = np.repeat(np.arange(images), per_image).astype(np.int32)
    labels = rng.integers(0, classes + 1, len(image_index)).astype(np.int16)  # classes without rows too
    want = _naive_index(labels, image_index, images, classes)
    for lab in (labels, labels.astype(np.int64)):
        got = build_index(lab, image_index, images, classes)
        for k, v in want.items():
            assert got[k].dtype == np.int64 and np.array_equal(got[k], v), k


def test_shard_aligned_writer_writes_whole_shards_from_any_blocks(tmp_path):
    a = zarr.create_array(str(tmp_path / "a.zarr"), shape=(1000, 3), chunks=(10, 3), shards=(40, 3), dtype="int32")
    data = np.arange(3000, dtype=np.int32).reshape(1000, 3)
    w = ShardAlignedWriter(a, 40)
    rng = np.random.default_rng(0)
    pos = 0
    while pos < 1000:
        n = int(rng.integers(0, 130))
        w.append(data[pos : pos + n])
        pos += n
        assert w.pos % 40 == 0 and w.pos + w.buffered == min(pos, 1000)  # only whole shards on disk so far
    w.close()
    assert w.pos == 1000 and np.array_equal(a[:], data)


def _write_parts(out, dim=6, images=9, per_part=4):
    rng = np.random.default_rng(0)
    num_parts = 0
    for p, start in enumerate(range(0, images, per_part)):
        per_image = {}
        for i in range(start, min(start + per_part, images)):
            n = int(rng.integers(0, 5))
            labels = rng.integers(0, 4, n)
            per_image[i] = [(0, image_rows(labels, rng.random(n), np.tile([1.0, 2, 5, 6], (n, 1)), labels > 2,
                                           rng.standard_normal((n, dim)), i, 0, "float16"))]
        write_part(out, p, part_arrays(per_image, "float16", dim))
        num_parts += 1
    return num_parts, images


def test_consolidation_that_drops_its_parts_writes_the_same_cache(tmp_path):
    stores = {}
    for drop in (False, True):
        out = tmp_path / f"drop_{drop}.zarr"
        num_parts, images = _write_parts(out)
        head = {k: np.zeros((5, 2), np.float32) for k in ("fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias",
                                                          "cls_score.weight", "cls_score.bias")}
        attrs = {"schema_version": SCHEMA_VERSION, "tap": TAP, "dim": 6, "categories": [{"id": c} for c in (1, 2, 3)]}
        left = []
        counts = consolidate(out, num_parts, np.arange(images) + 1, 6, "float16", 3, attrs, head,
                             lambda n: left.append(len(list(parts_dir(out).glob("part_*.npz")))), drop_parts=drop)
        assert left == ([num_parts - k for k in range(num_parts)] if drop else [num_parts] * num_parts)  # one by one
        assert not parts_dir(out).exists()
        stores[drop] = (zarr.open_group(str(out), mode="r"), counts)
    (a, ca), (b, cb) = stores[False], stores[True]
    assert ca == cb and ca["gt_rows"] == int(np.asarray(a["is_gt"][:]).sum())
    for name in ("features", "labels", "ious", "boxes", "image_index", "is_gt", "flipped", "image_ids"):
        assert np.array_equal(a[name][:], b[name][:]), name
    for name in ("image_row_ptr", "class_rows", "class_images"):
        assert np.array_equal(a["index"][name][:], b["index"][name][:]), name


def test_index_check_without_rebuilding_finds_exactly_the_damaged_indexes():
    """cache verify's streaming check (index_disagreements) against rebuilding the index and comparing: on
    random row sets with one index array damaged (a changed entry, an extra one, a shuffle), or none, at block
    sizes that cut the arrays anywhere, it flags a cache exactly when an array differs, and names one that does
    (the pair arrays are not judged when class_rows is wrong)."""
    from simcal.extract.schema import INDEX_ARRAYS
    from simcal.extract.store import index_disagreements

    rng = np.random.default_rng(0)
    for t in range(600):
        I, C = int(rng.integers(1, 8)), int(rng.integers(1, 6))
        counts = rng.integers(0, 5, I)
        labels = rng.integers(0, C + 1, int(counts.sum())).astype(np.int16)
        index = build_index(labels, np.repeat(np.arange(I), counts), I, C)
        stored = {k: v.copy() for k, v in index.items()}
        if t % 4:
            name = INDEX_ARRAYS[int(rng.integers(0, 5))]
            kind, a = int(rng.integers(0, 3)), stored[name]
            if kind == 0 and len(a):
                a[rng.integers(0, len(a))] += int(rng.choice([-2, -1, 1, 2]))
            elif kind == 1:
                stored[name] = np.r_[a, 0]
            elif len(a):
                stored[name] = rng.permutation(a)
        differ = {n for n in INDEX_ARRAYS if not np.array_equal(stored[n], index[n])}
        found = index_disagreements(labels, counts, C, stored, block=int(rng.integers(1, 6)))
        assert bool(found) == bool(differ) and set(found) <= differ | {"class_image_ptr", "class_images"}, (t, found)
        assert not found or set(found) & differ, (t, found, differ)
