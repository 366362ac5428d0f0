"""The torch detection Dataset: targets, masks, seeded flips, resizing, missing files."""

import numpy as np
import pytest
import torch
from PIL import Image

from simcal.data import InputError, load_annotations
from simcal.data.detection_dataset import DetectionDataset, collate, decode_masks
from tests.helpers import write_json


@pytest.fixture(scope="module")
def val(quick_bench):
    return load_annotations(quick_bench / "annotations" / "val.json"), quick_bench / "images" / "val"


def test_item_matches_annotations(val):
    ann, root = val
    ds = DetectionDataset(ann, root)
    image, t = ds[3]
    img = ann.images[3]
    anns = ann.annotations_of(img["id"])
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert t["image_id"] == img["id"] and t["flipped"] is False
    x, y, w, h = anns[0]["bbox"]
    assert t["boxes"][0].tolist() == [x, y, x + w, y + h]
    assert t["labels"].tolist() == [ann.mapping.to_contiguous(a["category_id"]) for a in anns]
    assert t["labels"].min() >= 1
    assert t["masks"].shape == (len(anns), 64, 64) and t["masks"].dtype == torch.uint8
    assert t["masks"].sum(dim=(1, 2)).tolist() == [a["area"] for a in anns]
    # pixels match the PNG on disk
    assert torch.equal((image * 255).round().byte(), torch.from_numpy(
        np.array(Image.open(root / img["file_name"]))).permute(2, 0, 1))


def test_flip_is_mirrored_and_seeded(val):
    ann, root = val
    plain, t0 = DetectionDataset(ann, root)[5]
    flipped, t1 = DetectionDataset(ann, root, flip_prob=1.0)[5]
    assert t1["flipped"] and torch.equal(flipped, plain.flip(-1)) and torch.equal(t1["masks"], t0["masks"].flip(-1))
    W = plain.shape[-1]
    assert torch.allclose(t1["boxes"][:, [0, 2]], W - t0["boxes"][:, [2, 0]])
    # Flip boxes are still the tight boxes of the flipped masks.
    m = t1["masks"][0]
    xs = torch.nonzero(m.any(0)).flatten()
    assert t1["boxes"][0, 0] == xs.min() and t1["boxes"][0, 2] == xs.max() + 1

    def pattern(seed, epoch=0):
        ds = DetectionDataset(ann, root, flip_prob=0.5, seed=seed, with_masks=False)
        ds.set_epoch(epoch)
        return [ds[i][1]["flipped"] for i in range(len(ds))]

    assert pattern(0) == pattern(0)
    assert pattern(0) != pattern(1) and pattern(0) != pattern(0, epoch=1)
    assert 5 < sum(pattern(0)) < len(pattern(0)) - 5


def test_resize_scales_boxes_and_masks(val):
    ann, root = val
    _, t0 = DetectionDataset(ann, root)[2]
    image, t = DetectionDataset(ann, root, min_size=128)[2]
    assert image.shape == (3, 128, 128) and t["masks"].shape[-2:] == (128, 128)
    assert torch.allclose(t["boxes"], t0["boxes"] * 2)
    images, targets = collate([DetectionDataset(ann, root)[i] for i in range(3)])
    assert len(images) == 3 and len(targets) == 3


def test_polygons_decode_and_crowd_is_dropped(tmp_path, tiny_doc):
    ann = load_annotations(write_json(tmp_path / "a.json", tiny_doc))
    m = decode_masks(ann.annotations_of(1), 20, 30)
    assert m.shape == (2, 20, 30) and m[0, 3:6, 2:6].all() and m[0, 10:].sum() == 0
    for img in ann.images:
        (tmp_path / img["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (30, 20)).save(tmp_path / img["file_name"])
    _, t = DetectionDataset(ann, tmp_path)[2]  # image 5 holds only a crowd region
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, 20, 30)


def test_missing_and_wrong_images_are_named(tmp_path, tiny_doc):
    ann = load_annotations(write_json(tmp_path / "a.json", tiny_doc))
    ds = DetectionDataset(ann, tmp_path / "imgs")
    with pytest.raises(InputError, match=r"a\.png: image file is missing \(3 of 3 images missing\)"):
        ds.check_files()
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (31, 20)).save(tmp_path / "imgs" / "a.png")
    with pytest.raises(InputError, match="is 31x20 but the annotations say 30x20"):
        ds[0]
