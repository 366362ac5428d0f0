"""Sub-chunk row reads from sharded zarr arrays equal zarr's own reads, byte for byte, and check what they touch."""

import os

import numpy as np
import pytest
import torch
import zarr

from simcal.core.errors import InputError
from simcal.extract.mapped_rows import H5RowReader, ShardRowReader, UnsupportedLayout
from simcal.extract.reader import FeatureReader

CHECKED = zarr.codecs.Crc32cCodec()  # what extract/store.py writes: each inner chunk followed by its crc32c


def _array(path, compressors=CHECKED, rows=130, written=100, dtype="float16"):
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
    unchecked = _array(tmp_path / "bytes.zarr", compressors=None)
    with pytest.raises(UnsupportedLayout, match="unchecked"):
        ShardRowReader(unchecked)
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
    for name, comp in (("shard", CHECKED), ("gzip", zarr.codecs.GzipCodec())):
        g = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="w")
        feats = _array(tmp_path / f"{name}.zarr" / "features", compressors=comp, rows=100)
        g.create_array("labels", data=np.arange(100, dtype=np.int16) % 3)
        cache = _Unrecorded({"features": g["features"], "labels": g["labels"]})
        store, ram = FeatureReader(cache, "none"), FeatureReader(cache, "ram", dtype=torch.bfloat16)
        assert (store.store_rows is not None) == (comp is CHECKED)
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


def test_out_of_order_and_unaligned_chunks_are_mapped(tmp_path):
    rows = np.array([0, 29, 40, 50, 60, 100])
    for name, gap in (("permuted", 0), ("after-2-bytes", 2), ("after-3-bytes", 3)):
        g = zarr.open_group(str(tmp_path / name), mode="w")
        a = _array(tmp_path / name / "features", rows=112, written=112)
        g.create_array("labels", data=np.zeros(112, np.int16))
        _rewrite_shard(tmp_path / name / "features" / "c" / "1" / "0", [3, 1, 0, 2], gap)
        want = a.get_orthogonal_selection((rows, slice(None)))
        reader = FeatureReader(_Unrecorded({"features": g["features"], "labels": g["labels"]}), "none")
        assert torch.equal(reader.read(rows)[0], torch.from_numpy(want.astype(np.float32))), name
        assert reader.store_rows is not None, name  # still the mapped reader


def test_a_big_endian_index_is_left_to_zarr(tmp_path):
    codec = zarr.codecs.ShardingCodec(chunk_shape=(7, 5), codecs=[zarr.codecs.BytesCodec(), CHECKED],
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


def _flip_chunk_byte(path, shard, chunk, at):
    """Invert byte ``at`` of inner chunk ``chunk``'s data in a shard file (a bad disk: the index still holds)."""
    raw = open(path / "c" / str(shard) / "0", "rb").read()
    offset = int(np.frombuffer(raw[-4 * 16 - 4 : -4], "<u8").reshape(-1, 2)[chunk, 0])
    with open(path / "c" / str(shard) / "0", "r+b") as f:
        f.seek(offset + at)
        f.write(bytes([raw[offset + at] ^ 0xFF]))


def test_a_damaged_chunk_is_refused_when_touched_and_only_then(tmp_path):
    a = _array(tmp_path / "a.zarr", rows=112, written=112)
    want = a[:]
    _flip_chunk_byte(tmp_path / "a.zarr", shard=1, chunk=2, at=13)  # rows 42..48
    r = ShardRowReader(a)
    ok = np.array([0, 28, 41, 49, 55])  # the damaged chunk's shard, not the chunk
    assert np.array_equal(r.read(ok).view(np.uint16), want[ok].view(np.uint16))
    r.will_need(np.array([41, 42]))  # a hint reads nothing into the result and checks nothing
    with pytest.raises(InputError, match=r"c/1/0: inner chunk 2 \(rows 42..48\) does not match its crc32c \(damaged\)"):
        r.read(np.array([41, 45]))
    with pytest.raises(ValueError, match="checksum"):  # zarr's own read refuses it too
        a[45]


def test_each_chunk_is_checked_once_however_often_its_shard_is_mapped(tmp_path, monkeypatch):
    """With more shards than stay mapped, a chunk read again is not checked again."""
    import simcal.extract.mapped_rows as mapped

    monkeypatch.setattr(mapped, "MAX_OPEN_FILES", 1)  # every shard change maps anew
    a = _array(tmp_path / "a.zarr", rows=112, written=112)
    checked, verify = [], mapped.ShardRowReader._verify
    monkeypatch.setattr(mapped.ShardRowReader, "_verify", lambda self, c, *x: checked.append(c) or verify(self, c, *x))
    r = ShardRowReader(a)
    for _ in range(5):
        assert np.array_equal(r.read(np.array([1, 30, 60, 90])).view(np.uint16),
                              a[:][[1, 30, 60, 90]].view(np.uint16))
    assert checked == [0, 4, 8, 12]  # the four chunks touched, each once (7 rows a chunk)


def test_a_resized_shard_is_refused_when_mapped(tmp_path):
    a = _array(tmp_path / "a.zarr", rows=112, written=112)
    shard = tmp_path / "a.zarr" / "c" / "1" / "0"
    size = os.path.getsize(shard)
    r = ShardRowReader(a, lambda rel: (size + 1, 0) if rel.endswith("c/1/0") else None)
    assert r.read(np.array([3])).shape == (1, 5)
    with pytest.raises(InputError, match=rf"c/1/0: has {size} bytes, {size + 1} were written at extraction"):
        r.read(np.array([30]))
