"""simcal convert --from detectron2 / mmdet / mmdet1 (+ --head): a source file becomes a checkpoint every stage
loads, or is refused in one sentence with nothing written."""


import pytest
import torch

from simcal.detector.convert import MMDET1_BEHAVIOUR, MMDET_BEHAVIOUR
from tests.detector.test_from_detectron2 import detectron2_r50_fpn
from tests.detector.test_from_mmdet import V3_CONFIG, mmdet_r50_fpn
from tests.detector.test_from_mmdet1 import RELEASE_CONFIG, mmdet1_r50_fpn
from tests.helpers import tiny_lvis, write_json


def _checkpointer_file(path, k):
    """A detectron2 Checkpointer .pth (the model-zoo .pkl is converted in test_framework_references.py)."""
    torch.save({"model": detectron2_r50_fpn(k=k), "iteration": 0}, path)
    return path


def _one_line(r, *words):
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_conversion_refusals_are_one_sentence(cli, tmp_path):
    ann = write_json(tmp_path / "train.json", tiny_lvis())
    src = _checkpointer_file(tmp_path / "model_final.pth", k=5)
    out = tmp_path / "c.pth"
    _one_line(cli("convert", "--from", "detectron2", src, "--ann", ann, "--out", out),
              "model_final.pth: scores 5 classes", "has 3 categories")
    _one_line(cli("convert", "--from", "detectron2", src, "--ann", ann, "--out", out, "--head", src, "--head-out",
                  tmp_path / "h.pth"), "--head takes the calibrated head of the SimCal authors' release, which comes "
              "with --from mmdet1, not --from detectron2")
    three = _checkpointer_file(tmp_path / "three.pth", k=3)
    _one_line(cli("convert", "--from", "detectron2", three, "--ann", ann, "--out", out, "--class-agnostic", "on"),
              "three.pth: has per-class box and mask heads")
    assert not out.exists()


NAMES = ("apple", "kite", "zebra")  # tiny_lvis's categories in id order (3, 7, 9)


def test_mmdet_v3_checkpoint_converts(cli, tmp_path):
    ann = write_json(tmp_path / "train.json", tiny_lvis())
    sd = mmdet_r50_fpn(k=3)
    src = tmp_path / "epoch_12.pth"
    torch.save({"meta": {"dataset_meta": {"classes": NAMES}, "cfg": V3_CONFIG, "epoch": 12}, "state_dict": sd,
                "optimizer": {"state": {}, "param_groups": []}}, src)
    out = tmp_path / "converted.pth"
    r = cli("convert", "--from", "mmdet", src, "--ann", ann, "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {out}: r50_fpn, 3 classes, converted from mmdet"  # the config said it all
    ck = torch.load(out, weights_only=True)  # (the builder took these keywords and weights strictly already)
    assert ck["builder_kwargs"] == {"class_agnostic": False, **MMDET_BEHAVIOUR}
    assert [c["id"] for c in ck["category_stats"]] == [3, 7, 9]
    assert ck["train_args"]["source_framework"] == "mmdet" and ck["train_args"]["epoch"] == 12
    assert "config" not in ck["train_args"] and "assumed" not in ck["train_args"]
    cls, got = sd["roi_head.bbox_head.fc_cls.weight"], ck["state_dict"]
    assert torch.equal(got["roi_heads.box_predictor.cls_score.weight"], torch.cat([cls[3:], cls[:3]]))
    assert torch.equal(got["backbone.body.conv1.weight"], sd["backbone.conv1.weight"])  # RGB already: unchanged


def test_mmdet_v2_file_without_config_says_what_it_assumes(cli, tmp_path):
    ann = write_json(tmp_path / "train.json", tiny_lvis())
    src = tmp_path / "r50_ag.pth"
    torch.save({"meta": {"mmdet_version": "2.28.2", "CLASSES": NAMES}, "state_dict": mmdet_r50_fpn(k=3, agnostic=True)},
               src)
    out = tmp_path / "converted.pth"
    r = cli("convert", "--from", "mmdet", src, "--ann", ann, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "3 classes (class-agnostic), converted from mmdet; the file carries no config: ResNet style='pytorch'" \
        in r.stdout and "assumed" in r.stdout
    ck = torch.load(out, weights_only=True)
    assert ck["builder_kwargs"] == {"class_agnostic": True, **MMDET_BEHAVIOUR}
    assert ck["train_args"]["assumed"].startswith("the file carries no config")


def _drop(name):
    return lambda sd, meta: sd.pop(name)


def _set(name, value):
    return lambda sd, meta: sd.update({name: value})


def _meta(**kw):
    return lambda sd, meta: meta.update(kw)


@pytest.mark.parametrize("edit, words", [
    (_drop("neck.fpn_convs.2.conv.bias"),
     "lacks 1 weight(s) r50_fpn needs (named as converted: backbone.fpn.layer_blocks.2.0.bias)"),
    (_set("backbone.layer1.3.conv1.weight", torch.zeros(1)),
     "has 1 weight(s) r50_fpn does not (named as converted: backbone.body.layer1.3.conv1.weight)"),
    (lambda sd, meta: None, "gives backbone.body.conv1.weight (named as converted) the shape (64,), where r50_fpn "
     "needs (64, 3, 7, 7)"),
    (_set("roi_head.mask_head.conv_logits.weight_", torch.zeros(1)),
     "has 1 weight(s) no mmdetection R50-FPN Mask R-CNN has: 'roi_head.mask_head.conv_logits.weight_'"),
    (_set("rpn_head.rpn_cls.weight", torch.zeros(6)), "has a softmax RPN (use_sigmoid=False, 2 scores per anchor)"),
    (lambda sd, meta: sd.update(mmdet_r50_fpn(k=5, skinny=True)), "scores 5 classes, and"),
    (_meta(CLASSES=NAMES + ("yak",)), "lists 4 class names, and"),
    (_meta(CLASSES=("apple", "kite", "zebu")), "names its class 2 'zebu', and"),
    (_meta(CLASSES=("zebra", "apple", "kite")), ("names its class 0 'zebra'", "the same names in another order")),
    (_meta(config="model = dict(backbone=dict(type='ResNet', depth=50, style='caffe'))"),
     "has a config that asks for a style='caffe' ResNet (stride in the 1x1 convs, BGR input with std 1), which "
     "--from mmdet does not reproduce"),
])
def test_mmdet_refusals_are_one_sentence(cli, tmp_path, edit, words):
    ann = write_json(tmp_path / "train.json", tiny_lvis())
    sd, meta = mmdet_r50_fpn(k=3, skinny=True), {"mmdet_version": "2.28.2", "CLASSES": NAMES}
    edit(sd, meta)
    src = tmp_path / "bad.pth"
    torch.save({"meta": meta, "state_dict": sd}, src)
    out = tmp_path / "c.pth"
    r = cli("convert", "--from", "mmdet", src, "--ann", ann, "--out", out)
    first, *more = (words,) if isinstance(words, str) else words
    _one_line(r, f"bad.pth: {first}", *more)
    assert not out.exists() and not list(tmp_path.glob("c.pth*"))


# ---- --from mmdet1: the SimCal authors' release ------------------------------------------------------------------

def _lvis_by_id() -> dict:
    """tiny_lvis with its categories listed by ascending id, as LVIS lists them: v1's labels follow the file's order."""
    doc = tiny_lvis()
    doc["categories"] = sorted(doc["categories"], key=lambda c: c["id"])
    return doc


def _release(path, sd, **meta):
    torch.save({"meta": {"mmdet_version": "1.0rc0+e5f3076", "config": RELEASE_CONFIG, "CLASSES": NAMES, "epoch": 12,
                         **meta}, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The release's r50 epoch_12.pth for tiny_lvis's 3 classes (random weights) and its source state dict."""
    sd = mmdet1_r50_fpn(k=3)
    return _release(tmp_path_factory.mktemp("release") / "epoch_12.pth", sd), sd


def _head_file(path, sd, rows=4, prefix="module."):
    """A calibrated 3fc_ft head as train_new.py saves it (mmcv save_checkpoint), started from the detector's head."""
    g = torch.Generator().manual_seed(1)
    src = {"fc1": "bbox_head.shared_fcs.0", "fc2": "bbox_head.shared_fcs.1", "fc_classifier": "bbox_head.fc_cls"}
    head = {}
    for layer, det in src.items():
        for p in ("weight", "bias"):
            t = sd[f"{det}.{p}"][:rows] if layer == "fc_classifier" else sd[f"{det}.{p}"]
            if layer == "fc_classifier" and len(t) < rows:
                t = torch.cat([t, torch.zeros((rows - len(t), *t.shape[1:]))])
            head[f"{prefix}feat_classifier.{layer}.{p}"] = t + 0.01 * torch.randn(t.shape, generator=g)
    torch.save({"meta": {"mmcv_version": "0.2.14", "time": "Mon Jul 13 10:00:00 2020"}, "state_dict": head}, path)
    return head


def test_the_release_converts_with_its_calibrated_head(cli, tmp_path, release):
    from simcal.calibrate.trainer import check_head_fits, load_head
    from simcal.core.errors import InputError
    from simcal.detector.checkpoint import read_checkpoint

    src, sd = release
    ann = write_json(tmp_path / "train.json", _lvis_by_id())
    head = _head_file(tmp_path / "3fc_ft.pth", sd)
    out, head_out = tmp_path / "r50.pth", tmp_path / "r50_3fc_ft.pth"
    r = cli("convert", "--from", "mmdet1", src, "--ann", ann, "--out", out, "--head", tmp_path / "3fc_ft.pth",
            "--head-out", head_out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"wrote {out}: r50_fpn, 3 classes, converted from mmdet1", f"wrote {head_out}: "
                                     f"a 3fc_ft head for {out}, converted from {tmp_path / '3fc_ft.pth'}"]
    ck = read_checkpoint(out)  # the fingerprint recomputed from the weights, as infer does
    assert ck["builder_kwargs"] == {"class_agnostic": False, **MMDET1_BEHAVIOUR}
    assert ck["train_args"]["source_framework"] == "mmdet1" and ck["train_args"]["mmdet_version"] == "1.0rc0+e5f3076"
    assert torch.equal(ck["state_dict"]["roi_heads.box_predictor.bbox_pred.weight"], sd["bbox_head.fc_reg.weight"])
    model, hck = load_head(head_out)
    check_head_fits(hck, head_out, ck, out, 12544)  # what simcal infer --head-ckpt checks: it fits
    assert hck["head"] == "3fc_ft" and [c["id"] for c in hck["categories"]] == [3, 7, 9]
    for ours, theirs in (("fc6", "fc1"), ("fc7", "fc2"), ("cls_score", "fc_classifier")):
        assert torch.equal(getattr(model, ours).weight, head[f"module.feat_classifier.{theirs}.weight"])
    x = torch.randn(4, 12544, generator=torch.Generator().manual_seed(2))
    w = {k.split(".", 2)[2]: v for k, v in head.items()}  # simple3fc's forward: fc1, relu, fc2, relu, fc_classifier
    h = torch.relu(torch.relu(x @ w["fc1.weight"].T + w["fc1.bias"]) @ w["fc2.weight"].T + w["fc2.bias"])
    assert torch.allclose(model(x), h @ w["fc_classifier.weight"].T + w["fc_classifier.bias"], atol=1e-4)
    with pytest.raises(InputError, match="r50_3fc_ft.pth: was calibrated on features of another detector than "
                       "other.pth"):
        check_head_fits(hck, head_out, {**ck, "detector_fingerprint": "sha256:" + "0" * 64}, "other.pth", 12544)


def test_a_head_for_other_classes_writes_nothing(cli, tmp_path, release):
    src, sd = release
    ann = write_json(tmp_path / "train.json", _lvis_by_id())
    _head_file(tmp_path / "3fc_ft.pth", sd, rows=6)
    out, head_out = tmp_path / "r50.pth", tmp_path / "head.pth"
    _one_line(cli("convert", "--from", "mmdet1", src, "--ann", ann, "--out", out, "--head", tmp_path / "3fc_ft.pth",
                  "--head-out", head_out),
              "3fc_ft.pth: scores 5 classes plus background, and the detector it is converted with scores 3")
    assert not out.exists() and not head_out.exists() and not list(tmp_path.glob("*.pth.*"))


@pytest.mark.parametrize("edit, args, words", [
    (lambda sd, meta: sd.update(mmdet1_r50_fpn(k=5, skinny=True)), (), "scores 5 classes, and"),
    (lambda sd, meta: meta.update(CLASSES=("zebra", "apple", "kite")), (),
     ("names its class 0 'zebra'", "the same names in another order")),
    (lambda sd, meta: sd.pop("neck.fpn_convs.2.conv.bias"), (),
     "lacks 1 weight(s) r50_fpn needs (named as converted: backbone.fpn.layer_blocks.2.0.bias)"),
    (lambda sd, meta: sd.update({"bbox_head.fc_reg.weight": torch.zeros(12)}), (),
     "has a box regressor of 12 rows and a mask predictor of 4 channels"),
    (lambda sd, meta: meta.update(config=RELEASE_CONFIG.replace("sample_num=2", "sample_num=0")), (),
     "has a config that asks for RoIAlign with sample_num=0, which --from mmdet1 does not reproduce"),
    (lambda sd, meta: meta.update(mmdet_version="2.28.2"), (), "was saved by mmdetection 2.28.2; convert it with "
     "--from mmdet"),
    (lambda sd, meta: None, ("--head", "h.pth"), "--head was given without --head-out"),
    (lambda sd, meta: None, ("--head", "h.pth", "--head-out", "c.pth"), "--head-out and --out name the same file"),
])
def test_mmdet1_refusals_are_one_sentence(cli, tmp_path, monkeypatch, edit, args, words):
    monkeypatch.chdir(tmp_path)
    ann = write_json(tmp_path / "train.json", _lvis_by_id())
    sd, meta = mmdet1_r50_fpn(k=3, skinny=True), {}
    edit(sd, meta)
    _release(tmp_path / "bad.pth", sd, **meta)
    r = cli("convert", "--from", "mmdet1", tmp_path / "bad.pth", "--ann", ann, "--out", "c.pth", *args)
    first, *more = (words,) if isinstance(words, str) else words
    _one_line(r, first, *more)
    assert not list(tmp_path.glob("c.pth*")) and not list(tmp_path.glob("h.pth*"))
