"""Detector builders (tiny, r50_fpn, class-agnostic), the loss hook, checkpoints."""

import re

import pytest
import torch
from torchvision.models.detection.roi_heads import fastrcnn_loss

from simcal.data import CategoryMapping, InputError
from simcal.detector.builders import build
from simcal.detector.checkpoint import (
    check_categories,
    load_checkpoint,
    make_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from simcal.detector.losses import build_classification_loss


def _batch(size=128, n=2):
    images = [torch.rand(3, size, size, generator=torch.Generator().manual_seed(i)) for i in range(n)]
    targets = []
    for i in range(n):
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        masks[0, 10:40, 12:50] = 1
        masks[1, 60:90, 70:100] = 1
        targets.append({"boxes": torch.tensor([[12.0, 10, 50, 40], [70, 60, 100, 90]]),
                        "labels": torch.tensor([1 + i, 3]), "masks": masks})
    return images, targets


# (r50_fpn's class-agnostic heads: the detectron2 reference test runs them against detectron2)
@pytest.mark.parametrize("arch,agnostic", [("tiny", False), ("tiny", True), ("r50_fpn", False)])
def test_builders_train_and_eval(arch, agnostic):
    torch.manual_seed(0)
    # r50_fpn: fewer sampled and kept RoIs than the defaults; its 12544-d box head dominates the test's time
    kw = ({"min_size": 128, "max_size": 128, "box_batch_size_per_image": 64, "rpn_post_nms_top_n_test": 100}
          if arch == "r50_fpn" else {})
    model = build(arch, 5, class_agnostic=agnostic, **kw)
    heads = model.roi_heads
    assert heads.box_predictor.cls_score.out_features == 6  # C + 1
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (1e-4, 0.5, 300)
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images[:1])[0]
    assert out["boxes"].shape[1] == 4 and out["masks"].shape[1:] == (1, 128, 128)
    assert len(out["boxes"]) <= 300 and out["labels"].min() >= 1
    if arch == "r50_fpn":
        assert heads.box_head.fc6.in_features == 256 * 7 * 7  # the paper's 12544-d tap
    else:
        assert heads.box_head.fc6.in_features == 64 * 7 * 7


def test_class_agnostic_heads_share_one_regressor_and_mask():
    torch.manual_seed(0)
    model = build("tiny", 5, class_agnostic=True)
    heads = model.roi_heads
    assert heads.box_predictor.bbox_pred.out_features == 4
    assert heads.mask_predictor.mask_fcn_logits.out_channels == 1
    x = torch.randn(3, 256)
    scores, deltas = heads.box_predictor(x)
    d = deltas.reshape(3, 6, 4)
    assert torch.equal(d, d[:, :1].expand(-1, 6, -1))
    m = heads.mask_predictor(torch.randn(2, 32, 7, 7))
    assert m.shape == (2, 6, 14, 14) and torch.equal(m[:, 2], m[:, 5])
    images, targets = _batch()
    model.train()
    sum(model(images, targets).values()).backward()
    assert heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0


def test_loss_hook_replaces_only_the_classifier_loss():
    images, targets = _batch()
    results = {}
    for name in ("builtin", "ce", "focal"):
        torch.manual_seed(0)
        model = build("tiny", 5)
        if name != "builtin":
            model.roi_heads.cls_loss = build_classification_loss(name)
        model.train()
        torch.manual_seed(1)
        results[name] = {k: v.item() for k, v in model(images, targets).items()}
    # Our CE through the hook equals torchvision's fastrcnn_loss on the same sampled RoIs.
    assert results["ce"] == pytest.approx(results["builtin"], rel=1e-5)
    assert results["focal"]["loss_classifier"] < results["ce"]["loss_classifier"]
    assert results["focal"]["loss_box_reg"] == pytest.approx(results["ce"]["loss_box_reg"], rel=1e-5)
    # The hook is called with the very logits and sampled labels that torchvision's fastrcnn_loss scored:
    # fastrcnn_loss on what the hook saw gives the built-in loss_classifier of the same forward.
    seen = {}
    ce = build_classification_loss("ce")

    def spy(logits, labels):
        seen["logits"], seen["labels"] = logits.detach(), labels
        return ce(logits, labels)

    torch.manual_seed(0)
    model = build("tiny", 5)
    model.roi_heads.cls_loss = spy
    model.train()
    torch.manual_seed(1)
    hooked = model(images, targets)["loss_classifier"].item()
    assert "_sampled_labels" not in vars(model.roi_heads)  # nothing of the forward stays on the module
    labels = seen["labels"]
    assert seen["logits"].shape == (len(labels), 6) and (labels == 0).any() and (labels > 0).any()
    ref, _ = fastrcnn_loss(seen["logits"], torch.zeros(len(labels), 6 * 4), [labels], [torch.zeros(len(labels), 4)])
    assert ref.item() == pytest.approx(results["builtin"]["loss_classifier"], rel=1e-5)
    assert hooked == pytest.approx(ref.item(), rel=1e-5)


def _ckpt(tmp_path, arch="tiny"):
    torch.manual_seed(0)
    model = build(arch, 3, class_agnostic=True)
    mapping = CategoryMapping((4, 8, 15), ("a", "b", "c"))
    ck = make_checkpoint(model, arch, {"class_agnostic": True}, mapping,
                         [{"id": i, "name": n, "instance_count": 3, "image_count": 2, "frequency": "r"}
                          for i, n in ((4, "a"), (8, "b"), (15, "c"))],
                         "sha256:x", {"iters": 1}, 1)
    return model, save_checkpoint(ck, tmp_path / "m.pth")


def test_checkpoint_round_trip(tmp_path):
    model, path = _ckpt(tmp_path)
    loaded, ck = load_checkpoint(path)
    assert ck["arch"] == "tiny" and ck["categories"]["ids"] == [4, 8, 15]
    assert ck["detector_fingerprint"].startswith("sha256:")
    images, _ = _batch(n=1)
    model.eval()
    with torch.no_grad():
        a, b = model(images)[0], loaded(images)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    assert type(loaded.roi_heads.box_predictor).__name__ == "AgnosticFastRCNNPredictor"
    # weights_only loading: the file holds nothing but plain containers and tensors
    torch.load(path, weights_only=True)


def test_corrupt_foreign_and_mismatched_checkpoints_are_refused(tmp_path):
    _, path = _ckpt(tmp_path)
    data = path.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="trunc.pth: is not a readable checkpoint"):
        read_checkpoint(tmp_path / "trunc.pth")
    torch.save({"model": 1}, tmp_path / "foreign.pth")
    with pytest.raises(InputError, match="is not a SimCal detector checkpoint"):
        read_checkpoint(tmp_path / "foreign.pth")
    ck = torch.load(path, weights_only=True)
    ck["arch"] = "r50_fpn"
    torch.save(ck, tmp_path / "wrong_arch.pth")
    with pytest.raises(InputError, match="weights do not match its arch 'r50_fpn'"):
        load_checkpoint(tmp_path / "wrong_arch.pth")
    with pytest.raises(InputError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(InputError, match="has 2 categories but checkpoint"):
        check_categories(ck, CategoryMapping((4, 8), ("a", "b")), path, "val.json")


def test_r50_backbone_weights_come_from_a_local_file_only(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(3)
    sd = resnet50().state_dict()
    torch.save(sd, tmp_path / "r50.pth")
    model = build("r50_fpn", 2, backbone_weights=str(tmp_path / "r50.pth"))
    assert torch.equal(model.backbone.body.conv1.weight, sd["conv1.weight"])
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="is not a readable torch state_dict"):
        build("r50_fpn", 2, backbone_weights=str(tmp_path / "bad.pth"))


def test_stride_in_1x1_moves_the_stride_keeps_shapes_and_changes_features():
    """detectron2's MSRA ResNet strides in the 1x1 conv: same weights and output sizes, other features."""
    torch.manual_seed(0)
    tv = build("r50_fpn", 3, min_size=64, max_size=64).eval()
    msra = build("r50_fpn", 3, min_size=64, max_size=64, stride_in_1x1=True).eval()
    msra.load_state_dict(tv.state_dict())
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(msra.backbone.body, name)[0]
        assert (block.conv1.stride, block.conv2.stride) == ((2, 2), (1, 1))
        assert getattr(tv.backbone.body, name)[0].conv2.stride == (2, 2)
    assert msra.backbone.body.layer1[0].conv1.stride == (1, 1)  # the first stage does not stride
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = tv.backbone(x), msra.backbone(x)
    assert all(a[k].shape == b[k].shape for k in a) and not torch.allclose(a["0"], b["0"])


def test_detectron2_anchors_are_unrounded_with_fixed_strides():
    """An 800x800 padded image: P2..P6 grids 200, 100, 50, 25, 13. torchvision's P6 stride is 800 // 13 = 61;
    detectron2's is 64 (modeling/anchor_generator.py), and its cell anchors keep their fractions."""
    import math

    from torchvision.models.detection.image_list import ImageList

    from simcal.detector.anchors import FixedStrideAnchorGenerator

    gen = build("r50_fpn", 3, anchors="detectron2").rpn.anchor_generator
    assert isinstance(gen, FixedStrideAnchorGenerator)
    images = ImageList(torch.zeros(1, 3, 800, 800), [(800, 800)])
    maps = [torch.zeros(1, 256, g, g) for g in (200, 100, 50, 25, 13)]
    d2 = gen(images, maps)[0]
    tv = build("r50_fpn", 3).rpn.anchor_generator(images, maps)[0]
    assert d2.shape == tv.shape == (3 * sum(g * g for g in (200, 100, 50, 25, 13)), 4)
    # the first P2 anchor: size 32, ratio 0.5 -> w = sqrt(32**2 / 0.5), h = 0.5 w, centred at (0, 0)
    w = math.sqrt(32 ** 2 / 0.5)
    assert torch.allclose(d2[0], torch.tensor([-w / 2, -w / 4, w / 2, w / 4]))
    assert torch.equal(tv[0], torch.tensor([-w / 2, -w / 4, w / 2, w / 4]).round())
    # the last P6 anchor's centre: cell 12 of 13 at stride 64 (detectron2) vs 61 (torchvision)
    assert d2[-1].view(2, 2).mean(0).tolist() == [12 * 64, 12 * 64]
    assert tv[-1].view(2, 2).mean(0).tolist() == [12 * 61, 12 * 61]


def test_detectron2_roi_align_pools_each_level_with_aligned_true():
    """ROIAlignV2 = torchvision's roi_align(aligned=True, sampling_ratio=0) on the level each box maps to."""
    from torchvision.ops import roi_align

    from simcal.detector.aligned_pooler import AlignedMultiScaleRoIAlign

    model = build("r50_fpn", 3, roi_align="detectron2")
    pool = model.roi_heads.box_roi_pool
    assert isinstance(pool, AlignedMultiScaleRoIAlign) and isinstance(model.roi_heads.mask_roi_pool, type(pool))
    g = torch.Generator().manual_seed(0)
    feats = {k: torch.randn(1, 4, 256 // s, 256 // s, generator=g) for k, s in (("0", 4), ("1", 8), ("2", 16),
                                                                                 ("3", 32))}
    boxes = [torch.tensor([[10.3, 12.7, 40.1, 33.9], [5.0, 5.0, 250.0, 240.0], [100.2, 80.6, 170.4, 200.8]])]
    got = pool(feats, boxes, [(256, 256)])
    levels = pool.map_levels(boxes)
    assert len(set(levels.tolist())) >= 2  # the boxes reach several levels
    for i, (box, level) in enumerate(zip(boxes[0], levels.tolist())):
        feat = feats[str(level)]
        rois = torch.cat([torch.zeros(1), box]).view(1, 5)
        want = roi_align(feat, rois, (7, 7), spatial_scale=feat.shape[-1] / 256, sampling_ratio=0, aligned=True)
        assert torch.allclose(got[i], want[0], atol=1e-6)
    legacy = build("r50_fpn", 3).roi_heads.box_roi_pool(feats, boxes, [(256, 256)])
    assert not torch.allclose(got, legacy)  # torchvision's own pooler is not aligned


@pytest.mark.parametrize("arch", ["tiny", "r50_fpn"])
def test_default_postprocessing_is_torchvisions_to_the_bit(arch):
    """Our own builders keep torchvision's rules: detector/roi_heads.py's plain functions give what
    torchvision's RoIHeads.postprocess_detections gives, bit for bit (ties, thresholds and tiny boxes included)."""
    from torchvision.models.detection.roi_heads import RoIHeads

    heads = build(arch, 7).eval().roi_heads
    g = torch.Generator().manual_seed(3)
    proposals = []
    for n in (300, 1, 0, 57):
        xy = torch.rand(n, 2, generator=g) * 120
        wh = torch.rand(n, 2, generator=g) * 40
        wh[: n // 10] = 0.004  # under torchvision's 1e-2 small-box limit
        proposals.append(torch.cat([xy, xy + wh], dim=1))
    logits = torch.randn(358, 8, generator=g) * 3
    logits[:20] = logits[0]  # tied scores
    regression = torch.randn(358, 32, generator=g) * 0.5
    shapes = [(128, 128), (100, 90), (64, 64), (128, 96)]
    ours = heads.postprocess_detections(logits, regression, proposals, shapes)
    theirs = RoIHeads.postprocess_detections(heads, logits, regression, proposals, shapes)
    assert sum(len(b) for b in ours[0]) > 300
    for a, b in zip(ours, theirs):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("small_boxes, kept", [("torchvision", 1), ("detectron2", 2)])
def test_small_boxes_switch_keeps_what_detectron2_keeps(small_boxes, kept):
    """torchvision drops detections under 1e-2 px before NMS; detectron2 keeps them."""
    model = build("tiny", 2, small_boxes=small_boxes).eval()
    heads = model.roi_heads
    proposals = [torch.tensor([[10.0, 10.0, 30.0, 30.0], [50.0, 50.0, 50.005, 60.0]])]
    logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 5.0, 0.0]])
    boxes, scores, labels = heads.postprocess_detections(logits, torch.zeros(2, 12), proposals, [(128, 128)])
    assert len(boxes[0]) >= kept and (labels[0] == 1).sum() == kept
    assert model.rpn.min_size == (1e-3 if small_boxes == "torchvision" else torch.finfo(torch.float32).tiny)


def test_detectron2_resize_rounds_the_size_half_up():
    """640x480 at 800/1333: torchvision floors to 1066x800, detectron2 (and mmcv) round to 1067x800."""
    from simcal.detector.detectron2_transform import shortest_edge_size

    assert shortest_edge_size(480, 640, 800, 1333) == (800, 1067)
    assert shortest_edge_size(375, 500, 800, 1333) == (800, 1067)
    assert shortest_edge_size(400, 1200, 800, 1333) == (444, 1333)  # the longer side caps the scale
    image = [torch.rand(3, 480, 640)]
    d2 = build("r50_fpn", 3, resize="detectron2").eval().transform(image)[0]
    tv = build("r50_fpn", 3).eval().transform(image)[0]
    assert d2.image_sizes == [(800, 1067)] and tv.image_sizes == [(800, 1066)]
    assert d2.tensors.shape[-2:] == tv.tensors.shape[-2:] == (800, 1088)  # both padded to a multiple of 32


def test_grid_paste_samples_the_mask_at_pixel_centres_inside_the_box():
    """detectron2's _do_paste_mask: pixel centre (x + 0.5) maps to (x + 0.5 - x0) / (x1 - x0) * 2 - 1 in the mask."""
    from simcal.detector.detectron2_transform import paste_masks_grid

    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :, :2] = 1.0  # left half on
    pasted = paste_masks_grid(mask, torch.tensor([[2.0, 1.0, 10.0, 5.0]]), (8, 12))[0, 0]
    assert pasted.shape == (8, 12)
    assert (pasted[1:5, 2:5] > 0.5).all() and (pasted[1:5, 7:10] < 0.5).all()  # halves land on the box's halves
    assert not pasted[:, :1].any() and not pasted[6:].any() and not pasted[:, 11:].any()  # nothing outside
    # a uniform mask pastes to exactly the box: inside 1 (up to the half-pixel border), outside 0
    full = paste_masks_grid(torch.ones(1, 1, 28, 28), torch.tensor([[2.0, 1.0, 10.0, 5.0]]), (8, 12))[0, 0]
    assert torch.equal(full[1:5, 2:10] >= 0.5, torch.ones(4, 8, dtype=torch.bool))
    assert not (full[5:] >= 0.5).any() and not (full[:, 10:] >= 0.5).any()


def test_mmdetection_v1_switches_build_their_modules_and_run():
    """mmdetection v1's switches (a converted release's builder keywords) put v1's modules where every stage reaches
    them; detections come back in the original image (one scale factor), masks pasted there."""
    torch.manual_seed(0)
    kw = {"anchors": "mmdet1", "boxes": "mmdet1", "roi_align": "mmdet1", "resize": "mmdet1", "paste_masks": "mmdet1",
          "box_score_thresh": 0.0, "min_size": 64, "max_size": 96, "rpn_post_nms_top_n_test": 40,
          "box_detections_per_img": 4}
    model = build("r50_fpn", 3, **kw).eval()
    assert [type(m).__name__ for m in (model.rpn, model.rpn.anchor_generator, model.roi_heads.box_roi_pool,
                                       model.roi_heads.mask_roi_pool, model.roi_heads.box_coder, model.transform)] == \
        ["Mmdet1RPN", "Mmdet1AnchorGenerator", "Mmdet1MultiScaleRoIAlign", "Mmdet1MultiScaleRoIAlign",
         "Mmdet1BoxCoder", "Mmdet1Transform"]
    assert model.roi_heads.convention == "mmdet1" and model.roi_heads.score_thresh == 0.0
    with torch.no_grad():
        out = model([torch.rand(3, 48, 40)])[0]
    assert len(out["boxes"]) == 4 and out["masks"].shape == (4, 1, 48, 40)
    assert out["boxes"][:, 2].max() <= 40 and out["boxes"][:, 3].max() <= 48  # v1's W - 1, plus one: ours


@pytest.mark.parametrize("kw, words", [
    ({"boxes": "mmdet1"}, "boxes='mmdet1' and resize='mmdet1' go together"),
    ({"resize": "mmdet1"}, "boxes='mmdet1' and resize='mmdet1' go together"),
    ({"paste_masks": "mmdet1"}, "paste_masks='mmdet1' needs resize='mmdet1'"),
    ({"boxes": "mmdet1", "resize": "mmdet1", "small_boxes": "detectron2"}, "keeps every box"),
    ({"boxes": "mmdet2"}, "unknown boxes 'mmdet2'; choose from torchvision, mmdet1"),
])
def test_mmdetection_v1_switches_that_only_work_together(kw, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        build("tiny", 3, **kw)
