"""The feature cache: contents, fidelity to the detector, resume, torchrun, idempotence, h5 export, refusals."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from simcal.data import InputError, category_statistics, load_annotations
from simcal.data.detection_dataset import DetectionDataset
from simcal.detector.builders import build
from simcal.detector.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from simcal.extract.cache_tools import verify
from simcal.extract.schema import INDEX_ARRAYS, Cache
from tests.helpers import call_main, call_main_one_thread, run_simcal, torchrun_simcal

ROW_ARRAYS = ("features", "labels", "ious", "boxes", "image_index", "is_gt", "flipped")


@pytest.fixture(scope="module")
def detector(quick_detector):
    return quick_detector


def _extract(run, bench, ckpt, out, *extra):
    """``simcal extract`` of the val split, in parts of 16 images, through ``run`` (the cli fixture or run_simcal)."""
    return run("extract", "--checkpoint", ckpt, "--data", bench, "--split", "val", "--out", out,
               "--images-per-part", "16", *extra)


@pytest.fixture(scope="module")
def val_cache(quick_bench, detector, tmp_path_factory):
    """The val split with flipped views, in parts of 16 images (the calibration tests' val cache has neither)."""
    out = tmp_path_factory.mktemp("cache") / "val.zarr"
    assert call_main("extract", "--checkpoint", detector, "--data", quick_bench, "--split", "val", "--out", out,
                     "--images-per-part", "16", "--flip") == 0
    return out


def _arrays(path):
    c = Cache(path)
    return {**{k: np.asarray(c[k][:]) for k in (*ROW_ARRAYS, "image_ids")},
            **{f"index/{k}": c.index(k) for k in INDEX_ARRAYS}}


def test_cache_holds_the_documented_rows(val_cache, quick_bench, cli):
    ann = load_annotations(quick_bench / "annotations" / "val.json")
    c = Cache(val_cache)
    a = c.attrs
    assert a["complete"] is True and a["dim"] == 64 * 7 * 7 and a["tap"] == "roi_heads.box_roi_pool"
    assert a["params"]["fg_per_gt"] == 8 and a["params"]["bg_per_image"] == 32 and a["params"]["flip"] is True
    assert [k["id"] for k in a["categories"]] == [k["id"] for k in ann.categories]
    assert c["features"].dtype == np.float16 and c["features"].shape == (c.num_rows, a["dim"])
    assert c["labels"].dtype == np.int16 and c["image_index"].dtype == np.int32
    assert np.asarray(c["image_ids"][:]).tolist() == [img["id"] for img in ann.images]
    labels, ious, is_gt = (np.asarray(c[k][:]) for k in ("labels", "ious", "is_gt"))
    image_index, flipped, boxes = (np.asarray(c[k][:]) for k in ("image_index", "flipped", "boxes"))
    assert np.all(np.diff(image_index) >= 0)  # grouped by image
    assert np.all((labels > 0) == (ious >= 0.5))
    # Every GT box of every image is stored once per view, with its class and IoU 1.
    for i, img in enumerate(ann.images[:20]):
        gts = ann.annotations_of(img["id"])
        for view in (False, True):
            rows = (image_index == i) & (flipped == view)
            assert is_gt[rows].sum() == len(gts)
            assert sorted(labels[rows & is_gt].tolist()) == sorted(ann.mapping.to_contiguous(g["category_id"])
                                                                  for g in gts)
            assert np.allclose(ious[rows & is_gt], 1.0)
            assert rows.sum() <= 8 * len(gts) + 32
            if not view:
                x, y, w, h = gts[0]["bbox"]
                assert any(np.allclose(b, [x, y, x + w, y + h], atol=1e-3) for b in boxes[rows & is_gt])
    # CSR: class c's rows are exactly the rows labelled c, and its images the images holding them.
    ptr, rows = c.index("class_row_ptr"), c.index("class_rows")
    for k in range(len(a["categories"]) + 1):
        assert np.array_equal(rows[ptr[k] : ptr[k + 1]], np.nonzero(labels == k)[0])
    iptr, imgs = c.index("class_image_ptr"), c.index("class_images")
    assert np.array_equal(imgs[iptr[3] : iptr[4]], np.unique(image_index[labels == 3]))
    assert cli("cache", "verify", val_cache).returncode == 0
    head = c.detector_head()
    assert head["fc6.weight"].shape == (256, 3136) and head["cls_score.weight"].shape == (13, 256)


def test_features_match_the_detector(val_cache, detector, quick_bench):
    """Recompute sampled rows from the image and the stored box through the detector."""
    from simcal.extract.proposals import pool_boxes

    model, _ = load_checkpoint(detector)
    ann = load_annotations(quick_bench / "annotations" / "val.json")
    ds = DetectionDataset(ann, quick_bench / "images" / "val", with_masks=False)
    c = Cache(val_cache)
    rng = np.random.default_rng(0)
    checked = 0
    for r in sorted(rng.choice(c.num_rows, size=40, replace=False).tolist()):
        i = int(c["image_index"][r])
        image, _ = ds[i]
        if bool(c["flipped"][r]):
            image = image.flip(-1)
        box = torch.from_numpy(np.asarray(c["boxes"][r : r + 1]))
        fresh = pool_boxes(model, image, box)[0].numpy()
        stored = np.asarray(c["features"][r]).astype(np.float32)
        assert np.allclose(stored, fresh, rtol=1e-2, atol=1e-2 * max(1.0, np.abs(fresh).max())), r
        checked += 1
    assert checked == 40


def test_rerun_is_idempotent_and_mismatches_are_refused(val_cache, quick_bench, detector, tmp_path, cli):
    before = {p: p.stat().st_mtime_ns for p in val_cache.rglob("*")}
    r = _extract(cli, quick_bench, detector, val_cache, "--flip")
    assert r.returncode == 0 and "already a complete cache" in r.stdout
    r = _extract(cli, quick_bench, detector, val_cache, "--flip", "--bg-per-image", "4")
    assert r.returncode == 2 and "other parameters or another detector" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "notacache").mkdir()
    (tmp_path / "notacache" / "x.txt").write_text("x")
    r = _extract(cli, quick_bench, detector, tmp_path / "notacache")
    assert r.returncode == 2 and "is not a SimCal feature cache" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in val_cache.rglob("*")} == before  # the cache was left alone


@pytest.mark.slow
def test_resume_after_kill_and_torchrun_match_one_process(few_val, detector, tmp_path, cli):
    base = ["-m", "simcal", "extract", "--checkpoint", str(detector), *map(str, few_val), "--images-per-part", "2",
            "--flip"]
    assert cli(*base[2:], "--out", tmp_path / "ref.zarr").returncode == 0  # uninterrupted, in-process
    ref = _arrays(tmp_path / "ref.zarr")
    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, *base, "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "killed.zarr.parts"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and len(list(parts.glob("part_*.npz"))) < 1:
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists()  # nothing half-written that looks complete
    assert list(parts.glob("part_*.npz"))  # killed after a finished part: the re-run resumes from it
    r = cli(*base[2:], "--out", out)  # the same command again, in-process
    assert r.returncode == 0, r.stderr
    for k, v in _arrays(out).items():
        assert np.array_equal(v, ref[k]), k
    assert not parts.exists()

    # torchrun gives each process one thread; float reductions depend on the thread count, so the
    # one-process reference runs with one thread too. Row choices do not depend on it at all.
    one, ddp = tmp_path / "one.zarr", tmp_path / "ddp.zarr"
    if torch.get_num_threads() == 1:  # as under make test: the reference above is that run already
        one_arrays = ref
    else:
        assert call_main_one_thread(*base[2:], "--out", one) == 0
        one_arrays = _arrays(one)
    r = torchrun_simcal(*base[2:], "--out", ddp, "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    assert Cache(ddp).attrs["world_size"] == 2
    for k, v in _arrays(ddp).items():
        assert np.array_equal(v, one_arrays[k]), k
    for k in ("labels", "image_index", "is_gt", "flipped"):
        assert np.array_equal(one_arrays[k], ref[k]), k


def test_h5_export_round_trip(val_cache, tmp_path, cli):
    out = tmp_path / "val.h5"
    r = cli("cache", "export", "--format", "h5", val_cache, out)
    assert r.returncode == 0, r.stderr
    z, h = Cache(val_cache), Cache(out)
    plain = [{k: v for k, v in c.attrs.items() if k != "integrity"} for c in (h, z)]
    assert plain[0] == plain[1]
    recorded = h.attrs["integrity"]["arrays"].keys()
    assert recorded >= {"features", "labels", "index/class_rows", "detector_head/fc6.weight"}
    assert verify(h) == []  # the export carries its own checksums
    for k in (*ROW_ARRAYS, "image_ids"):
        assert np.array_equal(np.asarray(h[k][:]), np.asarray(z[k][:])), k
    for k in INDEX_ARRAYS:
        assert np.array_equal(h.index(k), z.index(k))
    for k, v in z.detector_head().items():
        assert np.array_equal(h.detector_head()[k], v)
    info = cli("cache", "info", out)
    assert info.returncode == 0 and "complete: True" in info.stdout
    # the trainer's store reads: shard byte ranges (zarr), contiguous runs (h5), the RAM copy: all equal
    from simcal.extract.reader import FeatureReader

    rows = np.sort(np.random.default_rng(0).choice(z.num_rows, 200, replace=False))
    zr, hr = FeatureReader(z, "none"), FeatureReader(h, "none")
    assert zr.store_rows is not None and hr.store_rows is not None  # both mapped, not library reads
    for x in (zr.read(rows)[0], hr.read(rows)[0]):
        assert torch.equal(x, FeatureReader(z, "ram").read(rows)[0])


def test_int8_features_dequantize_close(quick_bench, detector, val_cache, tmp_path, cli):
    out = tmp_path / "int8.zarr"
    assert _extract(cli, quick_bench, detector, out, "--flip", "--dtype", "int8").returncode == 0
    q, z = Cache(out), Cache(val_cache)
    deq = np.asarray(q["features"][:200]).astype(np.float32) * np.asarray(q["feature_scale"][:200])[:, None]
    ref = np.asarray(z["features"][:200]).astype(np.float32)
    assert np.abs(deq - ref).max() <= np.abs(ref).max() / 127 + 1e-2
    from simcal.extract.reader import FeatureReader

    rows = np.arange(0, 200, 3)
    x, _ = FeatureReader(q, "none").read(rows)
    assert torch.equal(x, torch.from_numpy(deq[rows])) and torch.equal(FeatureReader(q, "ram").read(rows)[0], x)
    assert np.array_equal(np.asarray(q["labels"][:]), np.asarray(z["labels"][:]))


def test_incomplete_cache_and_bad_inputs_are_refused(val_cache, quick_bench, detector, tmp_path, cli):
    import zarr

    broken = tmp_path / "broken.zarr"
    shutil.copytree(val_cache, broken)
    zarr.open_group(str(broken), mode="r+").attrs["complete"] = False
    with pytest.raises(InputError, match="is an incomplete cache"):
        Cache(broken)
    r = run_simcal("cache", "verify", broken)  # the real exit-code path of 'simcal cache'
    assert r.returncode == 2 and "it is not marked complete" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("simcal cache: error: ")
    # missing images: named, with the count
    data = tmp_path / "data"
    shutil.copytree(quick_bench, data)
    first = sorted((data / "images" / "val").iterdir())
    for f in first[:3]:
        f.unlink()
    r = _extract(cli, data, detector, tmp_path / "x.zarr")
    assert r.returncode == 2 and first[0].name in r.stderr and "3 of" in r.stderr
    assert not (tmp_path / "x.zarr").exists()
    # a detector trained on other categories
    torch.manual_seed(0)
    other = build("tiny", 3)
    from simcal.data import CategoryMapping

    ck = make_checkpoint(other, "tiny", {}, CategoryMapping((1, 2, 3), ("a", "b", "c")),
                         category_statistics(load_annotations(quick_bench / "annotations" / "train.json"))[:3],
                         "sha256:x", {}, 0)
    save_checkpoint(ck, tmp_path / "other.pth")
    r = _extract(cli, quick_bench, tmp_path / "other.pth", tmp_path / "y.zarr")
    assert r.returncode == 2 and "has 12 categories but checkpoint" in r.stderr
    (tmp_path / "trunc.pth").write_bytes(detector.read_bytes()[:1000])
    r = _extract(run_simcal, quick_bench, tmp_path / "trunc.pth", tmp_path / "z.zarr")  # real exit-code path
    assert r.returncode == 2 and "is not a readable checkpoint" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("simcal extract: error: ")
