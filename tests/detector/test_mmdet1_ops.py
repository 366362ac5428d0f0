"""mmdetection v1's "+1" test behaviour (detector/legacy_*.py, mmdet1_transform.py) against small float64 references.

Each reference below is written from the v1 source of the SimCal release (twangnh/SimCal @ e5f3076), in v1's
own convention -- inclusive corners, a box [x1, x2] is x2 - x1 + 1 wide -- with plain Python/numpy loops:
``core/anchor/anchor_generator.py``, ``core/bbox/transforms.py::delta2bbox``, ``ops/nms/src/nms_kernel.cu``,
``anchor_heads/rpn_head.py::get_bboxes_single``, ``roi_extractors/single_level.py::map_roi_levels``,
``ops/roi_align/src/roi_align_kernel.cu``, ``bbox_heads/bbox_head.py::get_det_bboxes`` with
``post_processing/bbox_nms.py::multiclass_nms``, ``mask_heads/fcn_mask_head.py::get_seg_masks`` (cv2's
bilinear resize written out), ``mmcv.imrescale``. Our modules take and return boxes in torchvision's
convention (x2 = v1's x2 + 1); :func:`ours` / :func:`v1` convert at the comparison.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simcal.detector.legacy_anchors import Mmdet1AnchorGenerator
from simcal.detector.legacy_boxes import RCNN_STDS, RPN_STDS, Mmdet1BoxCoder, Mmdet1RPN, clip_boxes, nms_mmdet1
from simcal.detector.legacy_pooler import Mmdet1MultiScaleRoIAlign, map_levels_mmdet1, roi_align_mmdet1
from simcal.detector.mmdet1_transform import ScaledSize, paste_masks_mmdet1, rescale_size

REL = 1e-5  # the tolerance: relative to the magnitude of what is compared


def ours(inclusive) -> torch.Tensor:
    b = torch.as_tensor(np.asarray(inclusive, dtype=np.float64)).clone()
    b[..., 2:] += 1
    return b


def v1(boxes: torch.Tensor) -> np.ndarray:
    b = boxes.detach().double().numpy().copy()
    b[..., 2:] -= 1
    return b


def close(got, want, rel=REL) -> bool:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return got.shape == want.shape and bool(np.all(np.abs(got - want) <= rel * max(1.0, np.abs(want).max())))


# ---- references, from the v1 source --------------------------------------------------------------------------

def ref_base_anchors(base_size, scales, ratios):
    w = h = base_size
    x_ctr, y_ctr = 0.5 * (w - 1), 0.5 * (h - 1)
    out = []
    for r in ratios:  # scale_major: ratios outer
        for s in scales:
            ws, hs = w * (1 / math.sqrt(r)) * s, h * math.sqrt(r) * s
            out.append([round(x_ctr - 0.5 * (ws - 1)), round(y_ctr - 0.5 * (hs - 1)),
                        round(x_ctr + 0.5 * (ws - 1)), round(y_ctr + 0.5 * (hs - 1))])
    return np.array(out, dtype=np.float64)


def ref_grid_anchors(base, feat_h, feat_w, stride):
    return np.array([a + [x * stride, y * stride] * 2 for y in range(feat_h) for x in range(feat_w) for a in base])


def ref_delta2bbox(rois, deltas, stds, max_shape=None, wh_ratio_clip=16 / 1000):
    out = np.zeros_like(deltas)
    max_ratio = abs(math.log(wh_ratio_clip))
    for i, (x1, y1, x2, y2) in enumerate(rois):
        for k in range(deltas.shape[1] // 4):
            dx, dy, dw, dh = (deltas[i, 4 * k + j] * stds[j] for j in range(4))
            dw, dh = min(max(dw, -max_ratio), max_ratio), min(max(dh, -max_ratio), max_ratio)
            px, py, pw, ph = (x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1 + 1.0, y2 - y1 + 1.0
            gw, gh, gx, gy = pw * math.exp(dw), ph * math.exp(dh), px + pw * dx, py + ph * dy
            box = [gx - gw * 0.5 + 0.5, gy - gh * 0.5 + 0.5, gx + gw * 0.5 - 0.5, gy + gh * 0.5 - 0.5]
            if max_shape is not None:
                box = [min(max(v, 0), (max_shape[1] if j % 2 == 0 else max_shape[0]) - 1) for j, v in enumerate(box)]
            out[i, 4 * k:4 * k + 4] = box
    return out


def ref_iou(a, b):
    w = max(min(a[2], b[2]) - max(a[0], b[0]) + 1, 0.0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]) + 1, 0.0)
    inter = w * h
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


def ref_nms(boxes, scores, thr):
    """nms_kernel.cu: sorted by score, a box suppresses every later one with IoU > thr; kept indices in that order."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep, removed = [], set()
    for n, i in enumerate(order):
        if i in removed:
            continue
        keep.append(i)
        removed.update(j for j in order[n + 1:] if ref_iou(boxes[i], boxes[j]) > thr)
    return keep


def ref_bilinear(feature, y, x):
    """roi_align_kernel.cu::bilinear_interpolate on one (H, W) map."""
    H, W = feature.shape
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= H - 1:
        y_high = y_low = H - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_high = x_low = W - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * feature[y_low, x_low] + hy * lx * feature[y_low, x_high] + ly * hx * feature[y_high, x_low]
            + ly * lx * feature[y_high, x_high])


def ref_roi_align(feature, roi, out_size, spatial_scale, sample_num=2):
    """ROIAlignForward for one roi (x1, y1, x2, y2 inclusive) on a (C, H, W) map."""
    C = feature.shape[0]
    start_w, start_h = roi[0] * spatial_scale, roi[1] * spatial_scale
    end_w, end_h = (roi[2] + 1) * spatial_scale, (roi[3] + 1) * spatial_scale
    roi_w, roi_h = max(end_w - start_w, 0.0), max(end_h - start_h, 0.0)
    bin_h, bin_w = roi_h / out_size, roi_w / out_size
    out = np.zeros((C, out_size, out_size))
    for c in range(C):
        for ph in range(out_size):
            for pw in range(out_size):
                total = 0.0
                for iy in range(sample_num):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / sample_num
                    for ix in range(sample_num):
                        x = start_w + pw * bin_w + (ix + 0.5) * bin_w / sample_num
                        total += ref_bilinear(feature[c], y, x)
                out[c, ph, pw] = total / (sample_num * sample_num)
    return out


def ref_map_levels(rois, num_levels, finest_scale=56):
    scale = np.sqrt((rois[:, 2] - rois[:, 0] + 1) * (rois[:, 3] - rois[:, 1] + 1))
    return np.clip(np.floor(np.log2(scale / finest_scale + 1e-6)), 0, num_levels - 1).astype(np.int64)


def ref_cv2_linear(src, w, h):
    """cv2.resize(src, (w, h), INTER_LINEAR) in exact arithmetic: pixel centres, an edge pixel repeated."""
    sh, sw = src.shape
    def taps(d, n_src, n_dst):
        f = (d + 0.5) * (n_src / n_dst) - 0.5
        s = math.floor(f)
        f -= s
        if s < 0:
            f, s = 0.0, 0
        if s >= n_src - 1:
            f, s = 0.0, n_src - 1
        return s, min(s + 1, n_src - 1), f
    out = np.zeros((h, w))
    for dy in range(h):
        y0, y1, fy = taps(dy, sh, h)
        for dx in range(w):
            x0, x1, fx = taps(dx, sw, w)
            out[dy, dx] = ((1 - fy) * ((1 - fx) * src[y0, x0] + fx * src[y0, x1])
                           + fy * ((1 - fx) * src[y1, x0] + fx * src[y1, x1]))
    return out


# ---- tests -------------------------------------------------------------------------------------------------

def test_anchors_are_v1s_rounded_corners_at_fixed_strides():
    from torchvision.models.detection.image_list import ImageList

    sizes = [(13, 20), (7, 10), (4, 5), (2, 3), (1, 2)]  # an odd padded size: torchvision's strides would drift
    feats = [torch.zeros(1, 1, h, w) for h, w in sizes]
    got = Mmdet1AnchorGenerator()(ImageList(torch.zeros(1, 3, 52, 80), [(52, 80)]), feats)[0].double()
    want = np.concatenate([ref_grid_anchors(ref_base_anchors(s, [8], [0.5, 1.0, 2.0]), h, w, s)
                           for (h, w), s in zip(sizes, (4, 8, 16, 32, 64))])
    assert np.array_equal(v1(got), want)
    assert v1(got)[0].tolist() == [-21, -9, 24, 12]  # 32 px at ratio 0.5 on P2 (torchvision: [-23, -11, 23, 11])


def test_box_decoding_is_delta2bbox_with_its_two_sided_clamp():
    g = torch.Generator().manual_seed(0)
    rois = torch.rand(40, 2, generator=g, dtype=torch.float64) * 60
    rois = torch.cat([rois, rois + torch.rand(40, 2, generator=g, dtype=torch.float64) * 40 + 1], dim=1)  # ours
    deltas = torch.randn(40, 12, generator=g, dtype=torch.float64) * 2
    deltas[:5, 2::4] = -60.0  # far below -log(1000/16) / std: only v1 clamps from below
    for stds in (RPN_STDS, RCNN_STDS):
        got = Mmdet1BoxCoder(stds).decode(deltas, [rois]).reshape(40, 12)
        assert close(v1(got.view(40, 3, 4)).reshape(40, 12), ref_delta2bbox(v1(rois), deltas.numpy(), stds))
        clipped = clip_boxes(got.view(40, 3, 4), (50, 70))
        want = ref_delta2bbox(v1(rois), deltas.numpy(), stds, max_shape=(50, 70))
        assert close(v1(clipped).reshape(40, 12), want)
    from torchvision.models.detection._utils import BoxCoder

    plain = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(deltas, [rois]).reshape(40, 12)
    assert not close(plain[:5], Mmdet1BoxCoder(RPN_STDS).decode(deltas, [rois]).reshape(40, 12)[:5])


def test_plus_one_nms_is_torchvisions_nms_on_boxes_one_pixel_larger():
    """v1's kernel on its inclusive boxes keeps exactly what torchvision.ops.nms keeps on (x1, y1, x2 + 1, y2 + 1),
    including boxes thinner than one pixel (x2 < x1 within a pixel) and IoUs on both sides of the threshold."""
    g = torch.Generator().manual_seed(1)
    for trial in range(4):
        xy = torch.rand(120, 2, generator=g, dtype=torch.float64) * 30
        wh = torch.rand(120, 2, generator=g, dtype=torch.float64) * 12 - 0.9  # v1 widths x2 - x1 + 1 in (0.1, 12.1)
        inclusive = torch.cat([xy, xy + wh], dim=1).numpy()
        scores = torch.rand(120, generator=g, dtype=torch.float64)
        for thr in (0.3, 0.5, 0.7):
            keep = nms_mmdet1(ours(inclusive), scores, thr).tolist()
            assert keep == ref_nms(inclusive, scores.tolist(), thr), (trial, thr)
    a, b = np.array([[0.0, 0, 9, 9], [0, 0, 9, 10]]), torch.tensor([1.0, 0.9], dtype=torch.float64)
    assert ref_iou(a[0], a[1]) == 100 / 110  # the +1 widths: 10 x 10 inside 10 x 11
    assert nms_mmdet1(ours(a), b, 100 / 110 - 1e-9).tolist() == [0]  # suppressed above the threshold,
    assert nms_mmdet1(ours(a), b, 100 / 110).tolist() == [0, 1]  # kept at it (the CUDA kernel's IoU > thr)


def test_fpn_levels_use_the_plus_one_scale_and_finest_scale_56():
    g = torch.Generator().manual_seed(2)
    w = torch.logspace(1, 10, 500, base=2.0, dtype=torch.float64)
    h = w * (0.3 + torch.rand(500, generator=g, dtype=torch.float64))
    inclusive = torch.stack([torch.zeros_like(w), torch.zeros_like(w), w - 1, h - 1], dim=1).numpy()
    scale = np.sqrt(w.numpy() * h.numpy())
    off_edges = np.abs(np.log2(scale / 56) - np.round(np.log2(scale / 56))) > 1e-6
    got = map_levels_mmdet1(ours(inclusive), 4).numpy()
    assert np.array_equal(got[off_edges], ref_map_levels(inclusive, 4)[off_edges])
    assert set(got.tolist()) == {0, 1, 2, 3}
    # sqrt(112 * 112) = 2 x 56 sits on P3 in v1 (its box [0, 111]); torchvision's own box width 111 would give P2
    assert map_levels_mmdet1(ours([[0.0, 0, 111, 111]]), 4).tolist() == [1]


def test_roi_align_is_v1s_kernel_including_rois_under_one_cell():
    g = torch.Generator().manual_seed(3)
    feature = torch.randn(1, 2, 12, 14, generator=g, dtype=torch.float64)
    inclusive = np.array([[3.2, 4.7, 30.9, 20.1],   # an ordinary box
                          [10.0, 8.0, 10.5, 30.0],  # 1.5 px wide: 0.375 of a P2 cell (torchvision stretches it to 1)
                          [-5.0, -3.0, 60.0, 52.0],  # beyond the map
                          [40.3, 2.0, 41.9, 3.1]])   # under one cell both ways
    rois = torch.cat([torch.zeros(4, 1, dtype=torch.float64), ours(inclusive)], dim=1)
    got = roi_align_mmdet1(feature, rois, (7, 7), 0.25, 2)
    for i, roi in enumerate(inclusive):
        assert close(got[i].numpy(), ref_roi_align(feature[0].numpy(), roi, 7, 0.25)), i
    from torchvision.ops import roi_align

    stretched = roi_align(feature, rois[1:2], (7, 7), 0.25, 2, aligned=False)
    assert not close(stretched[0].numpy(), got[1].numpy())  # the one rule where torchvision's op differs


def test_multilevel_pooler_picks_v1s_level_and_stride():
    g = torch.Generator().manual_seed(4)
    feats = {k: torch.randn(1, 2, 512 // s, 512 // s, generator=g, dtype=torch.float64)
             for k, s in (("0", 4), ("1", 8), ("2", 16), ("3", 32))}
    inclusive = np.array([[5.0, 5.0, 40.0, 30.0], [2.0, 3.0, 150.0, 140.0], [10.0, 20.0, 400.0, 380.0],
                          [0.0, 0.0, 500.0, 480.0]])
    pool = Mmdet1MultiScaleRoIAlign(["0", "1", "2", "3"], 7)
    got = pool(feats, [ours(inclusive)], [(512, 512)])
    levels = ref_map_levels(inclusive, 4)
    assert levels.tolist() == [0, 1, 2, 3]
    for i, (roi, level) in enumerate(zip(inclusive, levels)):
        assert close(got[i].numpy(), ref_roi_align(feats[str(level)][0].numpy(), roi, 7, 1 / 4 / 2 ** level)), i


def _rpn(nms_pre=30):
    from torchvision.models.detection.rpn import RPNHead

    rpn = Mmdet1RPN(Mmdet1AnchorGenerator(), RPNHead(4, 3), 0.7, 0.3, 256, 0.5, {"training": 2000, "testing": nms_pre},
                    {"training": 2000, "testing": 20}, 0.7)
    return rpn.double().eval()


def test_rpn_proposals_are_get_bboxes_single():
    """Per level: sigmoid, top nms_pre, delta2bbox clipped to the image, +1 NMS 0.7, keep nms_post; then the top
    max_num (= nms_post) of all levels by score."""
    from torchvision.models.detection.image_list import ImageList

    torch.manual_seed(5)
    rpn = _rpn()
    for p in rpn.head.parameters():
        torch.nn.init.normal_(p, std=0.6)
    shapes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    feats = {str(i): torch.randn(1, 4, h, w, dtype=torch.float64) for i, (h, w) in enumerate(shapes)}
    image = ImageList(torch.zeros(1, 3, 64, 80, dtype=torch.float64), [(61, 77)])
    with torch.no_grad():
        boxes, _ = rpn(image, feats)
        logits, deltas = rpn.head(list(feats.values()))
    props, scores = [], []
    for level, ((h, w), stride) in enumerate(zip(shapes, (4, 8, 16, 32, 64))):
        s = torch.sigmoid(logits[level][0].permute(1, 2, 0).reshape(-1)).numpy()
        d = deltas[level][0].permute(1, 2, 0).reshape(-1, 4).numpy()
        anchors = ref_grid_anchors(ref_base_anchors(stride, [8], [0.5, 1.0, 2.0]), h, w, stride)
        top = np.argsort(-s, kind="stable")[:30] if len(s) > 30 else np.arange(len(s))
        p = ref_delta2bbox(anchors[top], d[top], RPN_STDS, max_shape=(61, 77))
        keep = ref_nms(p, s[top].tolist(), 0.7)[:20]
        props.append(p[keep])
        scores.append(s[top][keep])
    props, scores = np.concatenate(props), np.concatenate(scores)
    best = np.argsort(-scores, kind="stable")[:20]
    assert close(v1(boxes[0]), props[best])


def test_detections_are_get_det_bboxes_then_multiclass_nms():
    """Softmax, boxes decoded and clipped in the resized image, divided by the one scale factor, per class
    score > thr and +1 NMS 0.5 in original pixels, the top max_per_img by score."""
    from simcal.detector.builders import build
    from simcal.detector.legacy_boxes import unscale_boxes

    heads = build("tiny", 3, boxes="mmdet1", resize="mmdet1", box_score_thresh=0.05,
                  box_detections_per_img=12).roi_heads
    g = torch.Generator().manual_seed(6)
    xy = torch.rand(60, 2, generator=g, dtype=torch.float64) * 70
    proposals = torch.cat([xy, xy + 8 + torch.rand(60, 2, generator=g, dtype=torch.float64) * 30], dim=1)
    logits = torch.randn(60, 4, generator=g, dtype=torch.float64) * 2
    regression = torch.randn(60, 16, generator=g, dtype=torch.float64) * 0.5
    shape, scale = ScaledSize(80, 96, 1.6), 1.6
    boxes, scores, labels = heads.postprocess_detections(logits, regression, [proposals], [shape])
    got = sorted(zip(labels[0].tolist(), scores[0].tolist(), v1(unscale_boxes(boxes[0], scale)).tolist()))
    probs = torch.softmax(logits, -1).numpy()
    decoded = ref_delta2bbox(v1(proposals), regression.numpy(), RCNN_STDS, max_shape=(80, 96)) / scale
    want = []
    for c in range(1, 4):
        idx = np.where(probs[:, c] > 0.05)[0]
        cls_boxes = decoded[idx, 4 * c:4 * c + 4]
        want += [(c, probs[idx[k], c], cls_boxes[k].tolist()) for k in ref_nms(cls_boxes, probs[idx, c].tolist(), 0.5)]
    assert len(want) > 12  # the cap applies
    want = sorted(sorted(want, key=lambda t: -t[1])[:12])
    assert [(c, round(s, 9)) for c, s, _ in got] == [(c, round(s, 9)) for c, s, _ in want]
    assert close([b for *_, b in got], [b for *_, b in want])


def test_mask_paste_is_get_seg_masks():
    """The box truncated to integers on v1's corners, w = x2 - x1 + 1, the probabilities resized to (w, h) by cv2's
    bilinear filter, placed at the box, > 0.5."""
    g = torch.Generator().manual_seed(7)
    probs = torch.rand(3, 1, 28, 28, generator=g)
    inclusive = np.array([[3.7, 2.2, 20.9, 15.99], [0.0, 0.0, 0.4, 0.3], [30.5, 10.1, 39.0, 29.0]])
    got = paste_masks_mmdet1(probs, ours(inclusive).float(), (30, 40))
    for i, box in enumerate(inclusive):
        x1, y1, x2, y2 = box.astype(np.int32)
        w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        want = np.zeros((30, 40))
        want[y1:y1 + h, x1:x1 + w] = ref_cv2_linear(probs[i, 0].double().numpy(), w, h)
        assert close(got[i, 0].numpy(), want), i
        assert np.array_equal(got[i, 0].numpy() > 0.5, want > 0.5)


@pytest.mark.parametrize("h, w", [(480, 640), (375, 500), (427, 640), (100, 1333), (612, 612), (1000, 333)])
def test_resize_is_mmcv_imrescale_with_one_scale_factor(h, w):
    from simcal.detector.builders import build

    scale = min(1333 / max(h, w), 800 / min(h, w))
    assert rescale_size(h, w) == (int(h * scale + 0.5), int(w * scale + 0.5), scale)
    if (h, w) == (480, 640):
        transform = build("tiny", 3, boxes="mmdet1", resize="mmdet1", min_size=800, max_size=1333).eval().transform
        target = {"boxes": torch.tensor([[10.0, 20.0, 110.0, 220.0]])}  # (x, y, w=100, h=200): v1's [10, 20, 109, 219]
        images, targets = transform([torch.rand(3, h, w)], [target])
        assert images.image_sizes == [(800, 1067)] and images.image_sizes[0].scale == scale
        assert close(v1(targets[0]["boxes"]), np.array([[10.0, 20.0, 109.0, 219.0]]) * scale)
        back = transform.postprocess([{"boxes": targets[0]["boxes"]}], images.image_sizes, [(h, w)])[0]["boxes"]
        assert close(back, [[10.0, 20.0, 110.0, 220.0]])  # torchvision would use 1067 / 640 and 800 / 480


def test_resize_filters_the_8bit_image_as_opencv():
    """v1 resizes the 8-bit image with cv2's INTER_LINEAR (held to OpenCV itself in test_opencv_resize.py), then
    normalises; within one grey level of the exact bilinear arithmetic."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from simcal.detector.builders import build
    from simcal.detector.opencv_resize import resize_like_opencv

    g = torch.Generator().manual_seed(8)
    image = torch.randint(0, 256, (3, 9, 13), generator=g).float() / 255
    transform = build("tiny", 3, boxes="mmdet1", resize="mmdet1", min_size=14, max_size=100).eval().transform
    resized = transform.resize(image)[0]
    assert resized.shape == (3, 14, 20)
    assert torch.equal(resized, GeneralizedRCNNTransform.normalize(transform, resize_like_opencv(image, (14, 20))))
    for size in ((14, 20), (5, 7)):  # up and down
        got = (resize_like_opencv(image, size) * 255).round().double().numpy()
        for c in range(3):
            exact = ref_cv2_linear(image[c].double().numpy() * 255, size[1], size[0])
            assert np.all(np.abs(got[c] - exact) <= 1.0)
