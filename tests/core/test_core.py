"""The shared core: one atomic writer, one json reader, one completion rule, torch-free."""

import json
import subprocess
import sys

import pytest

from simcal.core.atomic import atomic_target, write_json, write_text
from simcal.core.errors import InputError
from simcal.core.jsonio import read_json
from simcal.core.manifest import completed, manifest_path, read_manifest, remove_manifest, write_manifest


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json(target, {"a": 1}, indent=2)
    assert json.loads(target.read_text()) == {"a": 1}

    class Boom(Exception):
        pass

    def fail(f):
        f.write(b"half")
        raise Boom

    from simcal.core.atomic import atomic_write

    with pytest.raises(Boom):
        atomic_write(target, fail)
    assert json.loads(target.read_text()) == {"a": 1}  # untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]  # no temporary file left


def test_atomic_target_replaces_a_folder_only_on_success(tmp_path):
    out = tmp_path / "store"
    with atomic_target(out) as tmp:
        tmp.mkdir()
        (tmp / "x").write_text("1")
    assert (out / "x").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_target(out) as tmp:
            tmp.mkdir()
            (tmp / "y").write_text("2")
            raise RuntimeError
    assert sorted(p.name for p in out.iterdir()) == ["x"] and sorted(p.name for p in tmp_path.iterdir()) == ["store"]


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("dir", "is a directory"),
    (b'{"a": ', "is not valid JSON at line 1"),
    (b"{\"a\": \"\xc3\x28\"}", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nests JSON too deeply"),
])
def test_every_json_failure_is_one_input_error(tmp_path, content, message):
    path = tmp_path / "f.json"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as e:
        read_json(path, "a grid")
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_completed_needs_the_output_the_same_command_and_the_same_identity(tmp_path):
    out = tmp_path / "head.pth"
    identity = {"config": {"steps": 10, "lr_steps": (0.75, 0.92)}, "cache": "sha256:1"}
    write_text(out, "weights")
    assert completed(out, "calibrate", identity) is None  # no manifest yet: not complete
    write_manifest(out, "calibrate", identity, {"row": {"steps_per_s": 3.0}})
    assert completed(out, "calibrate", identity)["record"]["row"]["steps_per_s"] == 3.0  # tuples compare as lists
    assert completed(out, "calibrate", {**identity, "cache": "sha256:2"}) is None
    assert completed(out, "infer", identity) is None
    out.unlink()
    assert completed(out, "calibrate", identity) is None  # the manifest alone is not the output
    remove_manifest(out)
    assert read_manifest(out) is None and not manifest_path(out).exists()


def test_core_imports_no_heavy_library():
    code = ("import sys, simcal.core.atomic, simcal.core.cli_args, simcal.core.device, simcal.core.errors, "
            "simcal.core.formatting, simcal.core.jsonio, simcal.core.manifest, simcal.core.names; "
            "print(sorted(m for m in ('torch', 'numpy', 'zarr') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_readme_detector_imports_work():
    from simcal.detector import build, load_checkpoint

    model = build("tiny", 3)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4 and callable(load_checkpoint)


def test_device_refuses_cuda_where_there_is_none():
    import torch

    from simcal.core.device import resolve_amp, resolve_device

    assert resolve_device("cpu").type == "cpu" and not resolve_amp("auto", resolve_device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            resolve_device("cuda")
