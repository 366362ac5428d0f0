"""Reading other frameworks' checkpoints (detector/sources.py): files made here in each format's layout."""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from simcal.core.errors import InputError
from simcal.detector.sources import Inert, read_source

W = {"backbone.bottom_up.stem.conv1.weight": np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2),
     "roi_heads.box_predictor.cls_score.bias": np.zeros(4, np.float32)}


def _same(got: dict, want: dict) -> bool:
    return list(got) == list(want) and all(torch.equal(got[k], torch.as_tensor(v)) for k, v in want.items())


def test_detectron2_zoo_pickle_and_checkpointer_pth(tmp_path):
    (tmp_path / "model_final.pkl").write_bytes(pickle.dumps({"model": W, "__author__": "Detectron2 Model Zoo"},
                                                             protocol=2))
    src = read_source(tmp_path / "model_final.pkl", "detectron2")
    assert _same(src.weights, W) and src.meta == {"__author__": "Detectron2 Model Zoo"}
    sd = {f"module.{k}": torch.from_numpy(v) for k, v in W.items()}  # saved from inside DDP
    torch.save({"model": sd, "iteration": 89999, "optimizer": {"state": {}}}, tmp_path / "model_0089999.pth")
    src = read_source(tmp_path / "model_0089999.pth", "detectron2")
    assert _same(src.weights, W) and src.meta["iteration"] == 89999


def test_mmdet_v2_v1_and_the_version_guard(tmp_path):
    sd = {**{k: torch.from_numpy(v) for k, v in W.items()}, "backbone.bn1.num_batches_tracked": torch.tensor(0)}
    torch.save({"meta": {"mmdet_version": "2.28.2", "CLASSES": ("a", "b", "c"), "epoch": 24,
                         "config": "model = dict(type='MaskRCNN')"}, "state_dict": sd}, tmp_path / "v2.pth")
    src = read_source(tmp_path / "v2.pth", "mmdet")
    assert src.meta["classes"] == ["a", "b", "c"] and src.meta["epoch"] == 24 and len(src.weights) == 3
    assert src.meta["config"] == "model = dict(type='MaskRCNN')"  # the training config's text, for convert to check
    torch.save({"meta": {"mmdet_version": "1.0rc0+d3ca926", "config": "model = dict(...)"}, "state_dict": sd,
                "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "epoch_12.pth")
    assert read_source(tmp_path / "epoch_12.pth", "mmdet1").meta["mmdet_version"].startswith("1.")
    with pytest.raises(InputError, match=r"was saved by mmdetection 1.0rc0\+d3ca926; convert it with --from mmdet1"):
        read_source(tmp_path / "epoch_12.pth", "mmdet")
    with pytest.raises(InputError, match="was saved by mmdetection 2.28.2; convert it with --from mmdet"):
        read_source(tmp_path / "v2.pth", "mmdet1")


def _with_fake_module(qualname: str, cls: type):
    """Pickle ``cls`` under ``qualname`` without that package existing afterwards (as on a user's machine)."""
    module, name = qualname.rsplit(".", 1)
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    cls.__module__, cls.__qualname__ = module, name
    setattr(sys.modules[module], name, cls)
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


class _HistoryBuffer:
    def __init__(self):
        self._log_history = [0.5, 0.4]


class _Payload:
    def __reduce__(self):
        return os.system, ("true",)


def test_mmengine_bookkeeping_is_read_inert_and_other_globals_are_refused(tmp_path):
    added = _with_fake_module("mmengine.logging.history_buffer.HistoryBuffer", _HistoryBuffer)
    try:
        doc = {"meta": {"mmdet_version": "3.3.0", "dataset_meta": {"classes": ("a", "b")}, "cfg": "x = 1"},
               "state_dict": {k: torch.from_numpy(v) for k, v in W.items()},
               "message_hub": {"log_scalars": {"train/loss": _HistoryBuffer()}}}
        torch.save(doc, tmp_path / "v3.pth")
    finally:
        for m in reversed(added):
            sys.modules.pop(m, None)
    src = read_source(tmp_path / "v3.pth", "mmdet")
    assert _same(src.weights, W) and src.meta["classes"] == ["a", "b"] and src.meta["config"] == "x = 1"
    torch.save({"meta": {}, "state_dict": {"w": torch.ones(1)}, "x": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(InputError, match=r"evil.pth: names the global (posix|os)\.system.*refused before anything"):
        read_source(tmp_path / "evil.pth", "mmdet")
    assert Inert().__setstate__({"a": 1}) is None


@pytest.mark.parametrize("make, framework, words", [
    (lambda p: p.write_bytes(pickle.dumps({"model": W}, protocol=2)), "mmdet", "is a pickle, which mmdet never writes"),
    (lambda p: torch.save({"model": {}}, p), "mmdet", "no 'state_dict' entry); it looks like detectron2's"),
    (lambda p: torch.save({"state_dict": {}}, p), "detectron2", "no 'model' entry); it looks like mmdetection's"),
    (lambda p: torch.save({"state_dict": {}}, p), "mmdet", "has no weights under 'state_dict'"),
    (lambda p: torch.save({"state_dict": {"w": [1.0]}}, p), "mmdet", "'w' under 'state_dict' that is a list"),
    (lambda p: p.write_bytes(b"PK\x03\x04 truncated"), "mmdet", "is not a readable torch checkpoint"),
])
def test_foreign_or_broken_files_are_one_sentence(tmp_path, make, framework, words):
    path = tmp_path / ("x.pkl" if "pickle" in words else "x.pth")
    make(path)
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_source(path, framework)
