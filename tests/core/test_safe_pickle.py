"""The restricted weights unpickler: numpy arrays in dicts load; any other global is refused unrun."""

import collections
import os
import pickle
import pickletools

import numpy as np
import pytest

from simcal.core.errors import InputError
from simcal.core.safe_pickle import ALLOWED_GLOBALS, load_weights_pickle


def _zoo_like():
    """What a detectron2 model-zoo file holds: {"model": name -> ndarray, "__author__": str}, plus a scalar."""
    model = collections.OrderedDict([("backbone.conv1.weight", np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)),
                                     ("roi_heads.box_predictor.cls_score.bias", np.zeros(5, np.float32)),
                                     ("iteration", np.int64(90000))])
    return {"model": model, "__author__": "Detectron2 Model Zoo", "matching_heuristics": False}


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_weights_round_trip_and_name_only_allowed_globals(tmp_path, protocol):
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps(_zoo_like(), protocol=protocol))
    # every global a protocol-2 file names (GLOBAL opcodes; later protocols build names on the stack) is allowed
    named = {tuple(arg.split(" ", 1)) for op, arg, _ in pickletools.genops(path.read_bytes())
             if op.name == "GLOBAL"}
    assert named <= set(ALLOWED_GLOBALS)
    got = load_weights_pickle(path)
    want = _zoo_like()
    assert got["__author__"] == want["__author__"] and list(got["model"]) == list(want["model"])
    for k, v in want["model"].items():
        assert np.array_equal(got["model"][k], v) and got["model"][k].dtype == v.dtype


def test_numpy_1_names_are_read(tmp_path):
    """numpy 1.x pickles name numpy.core.multiarray (numpy 2 moved it to numpy._core)."""
    raw = pickle.dumps({"w": np.ones(3, np.float32)}, protocol=2).replace(b"numpy._core.multiarray",
                                                                         b"numpy.core.multiarray")
    (tmp_path / "old.pkl").write_bytes(raw)
    assert np.array_equal(load_weights_pickle(tmp_path / "old.pkl")["w"], np.ones(3, np.float32))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_naming_another_global_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "x": _Exploit(marker)}, protocol=2))
    with pytest.raises(InputError, match=r"evil.pkl: is a pickle that names the global (posix|os)\.system.*refused"):
        load_weights_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage, words", [
    (lambda raw: raw[: len(raw) // 2], "is not a readable pickle"),
    (lambda raw: b"not a pickle at all", "is not a readable pickle"),
    (lambda raw: b"", "is not a readable pickle"),
])
def test_truncated_or_foreign_files_are_one_sentence(tmp_path, damage, words):
    path = tmp_path / "bad.pkl"
    path.write_bytes(damage(pickle.dumps(_zoo_like(), protocol=2)))
    with pytest.raises(InputError, match=words):
        load_weights_pickle(path)
    with pytest.raises(InputError, match="does not exist"):
        load_weights_pickle(tmp_path / "missing.pkl")
