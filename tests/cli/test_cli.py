"""The one CLI: commands, lazy imports, help texts, the real exit-code path of argparse."""

import subprocess
import sys

import pytest

from tests.helpers import run_simcal

COMMANDS = ("data", "train", "convert", "extract", "cache", "calibrate", "infer", "evaluate", "demo")

#: What each command's --help must say it reads and writes (whitespace-normalised substrings of its description).
INPUTS_OUTPUTS = {
    "data": ("Inputs: LVIS v0.5/v1 or COCO instance json", "Outputs: statistics tables/JSON/plots, the synthetic "
             "benchmark folder, a COCO-LT json"),
    "train": ("Inputs: --data DIR (from 'simcal data synth') or --ann FILE --images DIR",
              "Outputs: CKPT (self-describing"),
    "convert": ("Inputs: SRC (a detectron2 or mmdetection v2/v3 checkpoint",
                "Output: CKPT, a checkpoint like 'simcal train' writes"),
    "extract": ("Inputs: --checkpoint CKPT and --data DIR --split S (or --ann FILE --images DIR)",
                "Output: CACHE.zarr, complete or absent"),
    "cache": ("Input: CACHE (zarr folder or .h5 export)", "export: write a single-file h5py copy with the same schema "
              "(output: OUT.h5)"),
    "calibrate": ("Inputs: --cache CACHE (zarr or .h5 from 'simcal extract')", "Outputs: HEAD.pth (weights_only"),
    "infer": ("Inputs: --checkpoint CKPT, --head-ckpt HEAD.pth, --data DIR --split val (or --ann/--images)",
              "Output: RESULTS.json and RESULTS.json.manifest.json"),
    "evaluate": ("Inputs: --gt VAL.json --results RESULTS.json --train-ann TRAIN.json.",
                 "Output: a markdown table in percent"),
    "demo": ("Inputs: none (the benchmark is generated, deterministic by --seed)",
             "Outputs: OUT/data (the benchmark), OUT/baseline_tiny.pth (the detector)"),
}


def test_help_lists_every_command(cli):
    r = cli("--help")
    assert r.returncode == 0 and r.stderr == ""
    for c in COMMANDS:
        assert f"\n    {c}" in r.stdout
    commands_part = r.stdout.split("  <command>\n", 1)[1].split("\noptions:", 1)[0]
    listed = [line.split()[0] for line in commands_part.splitlines() if line[4:5].strip()]  # 4-space indent
    assert listed == list(COMMANDS)  # every command, in pipeline order, nothing else


def test_help_imports_no_heavy_library():
    code = ("import sys; from simcal.cli import get_args_parser; get_args_parser(); "
            "print(sorted(m for m in ('torch', 'numpy', 'zarr', 'matplotlib', 'pycocotools') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_names_inputs_and_outputs(cli, command):
    r = cli(command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: simcal {command}")
    text = " ".join(r.stdout.split()).replace("- ", "-")  # argparse wraps after hyphens: undo that
    inputs, outputs = INPUTS_OUTPUTS[command]
    assert inputs in text, (command, text)
    assert outputs in text, (command, text)


def test_unknown_command_is_exit_2():
    """argparse's own refusal, through a real process: exit 2, one error line on stderr pointing at --help."""
    r = run_simcal("frobnicate")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("simcal: error: argument <command>: invalid choice: 'frobnicate'")
    assert r.stderr.rstrip().endswith("see 'simcal --help'.") and len(r.stderr.strip().splitlines()) == 1
