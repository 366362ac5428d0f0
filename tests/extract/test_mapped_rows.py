"""Sub-chunk row reads from sharded zarr arrays equal zarr's own reads, byte for byte."""

import os

import numpy as np
import pytest
import torch
import zarr

from simcal.core.errors import InputError
from simcal.extract.mapped_rows import H5RowReader, ShardRowReader, UnsupportedLayout
from simcal.extract.reader import FeatureReader


def _array(path, compressors=None, rows=130, written=100, dtype="float16"):
    """Chunks of 7 rows, shards of 4 chunks (28 rows): the last shard is partial; rows past
    ``written`` are never written, so shard 3 has empty inner chunks and shard 4 no file."""
    a = zarr.create_array(str(path), shape=(rows, 5), chunks=(7, 5), shards=(28, 5), dtype=dtype, fill_value=0,
                          compressors=compressors)
    data = np.random.default_rng(0).standard_normal((written, 5)).astype(dtype)
    a[:written] = data
    return a


def test_reads_equal_zarr_for_any_row_set(tmp_path):
    a = _array(tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr" / "c" / "4" / "0").exists()  # rows 112.. never written: no shard file
    r = ShardRowReader(a)
    rng = np.random.default_rng(1)
    sets = [np.arange(130), np.array([0]), np.array([129]), np.arange(95, 120), np.array([6, 7, 27, 28, 55, 56])]
    sets += [np.sort(rng.choice(130, size=k, replace=False)) for k in (1, 3, 17, 64, 129) for _ in range(10)]
    for rows in sets:
        want = a.get_orthogonal_selection((rows, slice(None)))
        got = r.read(rows)
        assert got.dtype == want.dtype and np.array_equal(got.view(np.uint16), want.view(np.uint16)), rows
    assert r.read(np.zeros(0, np.int64)).shape == (0, 5)
    with pytest.raises(IndexError):
        r.read(np.array([3, 2]))


def test_other_layouts_are_left_to_zarr(tmp_path):
    a = _array(tmp_path / "gz.zarr", compressors=zarr.codecs.GzipCodec())
    with pytest.raises(UnsupportedLayout, match="compressed"):
        ShardRowReader(a)
    plain = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(10, 5), chunks=(7, 5), dtype="float16")
    with pytest.raises(UnsupportedLayout, match="sharding"):
        ShardRowReader(plain)


class _Unrecorded(dict):
    """Arrays without an integrity record (what the readers need of a Cache, checks passing)."""

    def require_intact(self, names=None):
        pass

    def file_record(self, rel):
        return None


def test_feature_reader_store_reads_equal_memory_reads(tmp_path):
    """A cache-shaped group: preload none (shard reads), and a compressed one (zarr reads), equal to RAM."""
    for name, comp in (("shard", None), ("gzip", zarr.codecs.GzipCodec())):
        g = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="w")
        feats = _array(tmp_path / f"{name}.zarr" / "features", compressors=comp, rows=100)
        g.create_array("labels", data=np.arange(100, dtype=np.int16) % 3)
        cache = _Unrecorded({"features": g["features"], "labels": g["labels"]})
        store, ram = FeatureReader(cache, "none"), FeatureReader(cache, "ram", dtype=torch.bfloat16)
        assert (store.store_rows is not None) == (comp is None)
        rows = np.array([0, 5, 6, 7, 30, 31, 77, 99])
        x, y = store.read(rows)
        assert torch.equal(x, torch.from_numpy(np.asarray(feats[:][rows]).astype(np.float32)))
        xb, yb = ram.read(rows)
        assert torch.equal(xb, x.to(torch.bfloat16)) and torch.equal(y, yb)


def test_a_corrupt_shard_index_is_refused(tmp_path):
    a = _array(tmp_path / "a.zarr")
    shard = tmp_path / "a.zarr" / "c" / "1" / "0"
    with open(shard, "r+b") as f:
        f.seek(os.path.getsize(shard) - 10)
        f.write(b"\xff")
    with pytest.raises(InputError, match=r"c/1/0: the shard index is truncated or corrupt.*extract the cache again"):
        ShardRowReader(a).read(np.array([30]))


def test_h5_contiguous_features_are_mapped_and_chunked_ones_left_to_h5py(tmp_path):
    import h5py

    data = np.random.default_rng(2).standard_normal((50, 6)).astype(np.float16)
    with h5py.File(tmp_path / "c.h5", "w") as h:
        h.create_dataset("contiguous", data=data)
        h.create_dataset("big_endian", data=data.astype(">f2"))
        h.create_dataset("chunked", data=data, chunks=(8, 6))
        h.create_dataset("gzip", data=data, chunks=(8, 6), compression="gzip")
    with h5py.File(tmp_path / "c.h5", "r") as h:
        rows = np.array([0, 3, 4, 5, 31, 49])
        for name in ("contiguous", "big_endian"):
            got = H5RowReader(h[name]).read(rows)
            assert np.array_equal(got, h[name][rows]) and np.array_equal(got.astype(np.float16), data[rows])
        for name in ("chunked", "gzip"):
            with pytest.raises(UnsupportedLayout):
                H5RowReader(h[name])


def _rewrite_shard(path, order, gap):
    """Rewrite a shard with its inner chunks in ``order`` after ``gap`` bytes, with a valid index."""
    import google_crc32c

    raw = open(path, "rb").read()
    pairs = np.frombuffer(raw[-4 * 16 - 4 : -4], "<u8").reshape(-1, 2)
    body, new = b"\0" * gap, pairs.copy()
    for k in order:
        o, nb = pairs[k]
        new[k] = (len(body), nb)
        body += raw[int(o) : int(o + nb)]
    idx = new.astype("<u8").tobytes()
    open(path, "wb").write(body + idx + np.uint32(google_crc32c.value(idx)).astype("<u4").tobytes())


def test_out_of_order_chunks_are_mapped_and_unaligned_ones_fall_back_to_zarr(tmp_path):
    rows = np.array([0, 29, 40, 50, 60, 100])
    for name, gap in (("permuted", 0), ("unaligned", 2)):
        g = zarr.open_group(str(tmp_path / name), mode="w")
        a = _array(tmp_path / name / "features", rows=112, written=112)
        g.create_array("labels", data=np.zeros(112, np.int16))
        _rewrite_shard(tmp_path / name / "features" / "c" / "1" / "0", [3, 1, 0, 2], gap)
        want = a.get_orthogonal_selection((rows, slice(None)))
        reader = FeatureReader(_Unrecorded({"features": g["features"], "labels": g["labels"]}), "none")
        assert torch.equal(reader.read(rows)[0], torch.from_numpy(want.astype(np.float32))), name
        assert (reader.store_rows is not None) == (gap == 0), name  # unaligned: zarr reads it from then on


def test_a_big_endian_index_is_left_to_zarr(tmp_path):
    codec = zarr.codecs.ShardingCodec(chunk_shape=(7, 5), codecs=[zarr.codecs.BytesCodec()],
                                      index_codecs=[zarr.codecs.BytesCodec(endian="big"), zarr.codecs.Crc32cCodec()])
    a = zarr.create_array(str(tmp_path / "b.zarr"), shape=(30, 5), chunks=(28, 5), dtype="float16",
                          compressors=None, serializer=codec)
    with pytest.raises(UnsupportedLayout, match="little-endian index"):
        ShardRowReader(a)


def test_one_reader_serves_two_threads(tmp_path, monkeypatch):
    """A sweep's next prefetch thread can start while the last one finishes a read."""
    import threading

    import simcal.extract.mapped_rows as mapped

    monkeypatch.setattr(mapped, "MAX_OPEN_FILES", 2)  # evictions on almost every read
    a = _array(tmp_path / "a.zarr", rows=130, written=130)
    r, want, errors = ShardRowReader(a), a[:], []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                rows = np.sort(rng.choice(130, size=9, replace=False))
                assert np.array_equal(r.read(rows).view(np.uint16), want[rows].view(np.uint16))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_each_shard_is_checked_once_however_often_it_is_mapped(tmp_path, monkeypatch):
    """With more shards than stay mapped, a shard mapped again is not read whole again for its crc32c."""
    import simcal.extract.mapped_rows as mapped
    from simcal.extract.integrity import file_crc

    monkeypatch.setattr(mapped, "MAX_OPEN_FILES", 1)  # every shard change maps anew
    a = _array(tmp_path / "a.zarr", rows=112, written=112)
    root = tmp_path / "a.zarr"
    record = {f"c/{s}/0": (os.path.getsize(root / "c" / str(s) / "0"), file_crc(root / "c" / str(s) / "0"))
              for s in range(4)}
    checked = []
    monkeypatch.setattr(mapped, "file_crc", lambda p: checked.append(p) or file_crc(p))
    r = ShardRowReader(a, lambda rel: record.get(rel.split("/", 1)[1] if "/" in rel else rel))
    for _ in range(5):
        assert np.array_equal(r.read(np.array([1, 30, 60, 90])).view(np.uint16),
                              a[:][[1, 30, 60, 90]].view(np.uint16))
    assert sorted(p.parent.name for p in checked) == ["0", "1", "2", "3"]  # four shards, each checked once
