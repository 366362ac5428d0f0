"""Damaged feature caches: `cache verify`, `calibrate` and `cache export` refuse them in one sentence.

Each case copies the quick val cache and damages the copy the way a disk, a crash or a hand
edit would. Cases marked ``rerecord`` also rewrite the integrity record after the damage (a
buggy writer, not a bad disk): the checksums then hold, and the value checks must catch it.
"""

import shutil

import numpy as np
import pytest
import zarr

from simcal.extract.integrity import record_store


def _set(path, name, fn):
    arr = zarr.open_group(str(path), mode="r+")[name]
    arr[:] = fn(np.asarray(arr[:]))


def _attrs(path, **kw):
    zarr.open_group(str(path), mode="r+").attrs.update(kw)


def _overwrite(path, rel, at, data):
    with open(path / rel, "r+b") as f:
        f.seek(at)
        f.write(data)


def _flip(path, rel, from_end):
    """Invert one byte ``from_end`` bytes before the end of a file (a changed byte, whatever it was)."""
    with open(path / rel, "r+b") as f:
        f.seek(-from_end, 2)
        byte = f.read(1)[0]
        f.seek(-from_end, 2)
        f.write(bytes([byte ^ 0xFF]))


def _truncate(path, rel):
    with open(path / rel, "r+b") as f:
        f.truncate(f.seek(0, 2) - 100)


CASES = {
    # name: (damage, rerecord, words in the verify message)
    "features-shard-deleted": (lambda p: (p / "features/c/0/0").unlink(), False, "file features/c/0/0 is missing"),
    "features-bytes-overwritten": (lambda p: _overwrite(p, "features/c/0/0", 4096, b"\x00\x7c" * 64), False,
                                   "features/c/0/0 does not match its crc32c"),
    "features-shard-truncated": (lambda p: _truncate(p, "features/c/0/0"), False, "features/c/0/0 has"),
    "shard-index-flipped": (lambda p: _flip(p, "features/c/0/0", 8), False, "does not match its crc32c"),
    "labels-array-deleted": (lambda p: shutil.rmtree(p / "labels"), False, "file labels/"),
    "ious-rewritten": (lambda p: _set(p, "ious", lambda a: a + 4.0), False, "file ious/c/0"),
    "ious-out-of-range": (lambda p: _set(p, "ious", lambda a: a + 4.0), True, "ious outside [0, 1]"),
    "rows-relabelled": (lambda p: _set(p, "labels", lambda a: np.roll(a, 7)), True, "disagrees with the labels"),
    "labels-beyond-classes": (lambda p: _set(p, "labels", lambda a: np.where(a > 0, 999, a)), True,
                              "labels outside 0..12"),
    "nan-features": (lambda p: _set(p, "features", lambda a: np.where(np.arange(a.shape[1]) == 3, np.nan, a)), True,
                     "non-finite features"),
    "dim-attribute-edited": (lambda p: _attrs(p, dim=1234), False, "the attributes say"),
    "categories-not-a-list": (lambda p: _attrs(p, categories="cats"), False, "'categories' or 'dim' attribute"),
    "integrity-record-removed": (lambda p: _attrs(p, integrity=None), False, "has no integrity record"),
    "counts-edited": (lambda p: _attrs(p, counts={"rows": 1, "fg_rows": 1, "images": 1}), False,
                      "the 'counts' attribute says"),
}


def _damaged(src, tmp_path, name):
    damage, rerecord, _ = CASES[name]
    path = tmp_path / "damaged.zarr"
    shutil.copytree(src, path)
    damage(path)
    if rerecord:
        _attrs(path, integrity=record_store(path))
    return path


def _one_line(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


@pytest.mark.parametrize("name", CASES)
def test_verify_names_the_damage(quick_val_cache, tmp_path, cli, name):
    path = _damaged(quick_val_cache, tmp_path, name)
    _one_line(cli("cache", "verify", path), "damaged.zarr: failed verification", CASES[name][2])


# What calibration reads decides where it stops: at open (structure), at the small arrays' checksums,
# or at the first read of a features shard. It never trains on damaged rows.
@pytest.mark.parametrize("name, preload", [
    ("features-shard-deleted", "ram"), ("features-bytes-overwritten", "ram"), ("features-bytes-overwritten", "none"),
    ("features-shard-truncated", "none"), ("labels-array-deleted", "ram"), ("ious-rewritten", "ram"),
    ("dim-attribute-edited", "ram"), ("categories-not-a-list", "ram"), ("integrity-record-removed", "ram"),
])
def test_calibrate_refuses_a_damaged_cache(quick_val_cache, tmp_path, cli, name, preload):
    path = _damaged(quick_val_cache, tmp_path, name)
    out = tmp_path / "head.pth"
    r = cli("calibrate", "--cache", path, "--steps", "5", "--preload", preload, "--out", out)
    _one_line(r, "damaged", "extract")
    assert not out.exists() and not list(tmp_path.glob(".*tmp*")) and not list(tmp_path.glob("head.pth*"))


def test_export_refuses_a_damaged_cache(quick_val_cache, tmp_path, cli):
    path = _damaged(quick_val_cache, tmp_path, "features-bytes-overwritten")
    _one_line(cli("cache", "export", path, tmp_path / "x.h5"), "is a damaged cache", "crc32c")
    assert not (tmp_path / "x.h5").exists()


def test_a_sound_cache_and_its_export_verify(quick_val_cache, tmp_path, cli):
    """The control: the same commands accept the undamaged cache and its h5 export."""
    r = cli("cache", "verify", quick_val_cache)
    assert r.returncode == 0 and "every file matches its crc32c" in r.stdout, r.stderr
    assert cli("cache", "export", quick_val_cache, tmp_path / "v.h5").returncode == 0
    assert cli("cache", "verify", tmp_path / "v.h5").returncode == 0
    _flip(tmp_path, "v.h5", 5000)  # a byte of the datasets' data, near the end of the file
    _one_line(cli("cache", "verify", tmp_path / "v.h5"), "does not match its crc32c")


def test_the_row_scan_reads_in_blocks_and_sees_across_their_edges():
    """cache verify reads the row arrays a block at a time: a problem in any block, or an image-order break
    exactly at a block's edge, is found as when the rows are read whole."""
    from simcal.extract.cache_tools import _scan_rows

    rows = {"labels": np.array([0, 2, 1, 0, 3, 0, 0, 1], np.int16), "image_index": np.array([0, 0, 1, 1, 2, 2, 3, 3]),
            "ious": np.linspace(0, 1, 8, dtype=np.float32), "boxes": np.tile(np.float32([0, 0, 2, 3]), (8, 1))}

    def scan(block, **damage):
        return _scan_rows({**rows, **damage}, 8, 4, 3, block=block)

    assert scan(3)[:2] == scan(8)[:2] == ([], 4) and scan(3)[2].tolist() == [2, 2, 2, 2]
    late = rows["image_index"].copy()
    late[4:] = [1, 1, 2, 2]  # still grouped
    assert scan(4, image_index=late)[:2] == ([], 4)
    broken = rows["image_index"].copy()
    broken[4] = 0  # image 0 again after image 1, at the edge of a 4-row block
    assert scan(4, image_index=broken)[0] == scan(8, image_index=broken)[0] == [
        "rows are not grouped by image in image-index order"]
    ious, boxes = rows["ious"].copy(), rows["boxes"].copy()
    ious[7], boxes[6, 2] = 1.5, -1.0
    assert scan(3, ious=ious, boxes=boxes)[0] == ["ious outside [0, 1]", "boxes that are not finite xyxy boxes"]
    labels = rows["labels"].copy()
    labels[7] = 4
    assert scan(3, labels=labels)[0] == ["labels outside 0..3"]
