"""``--device auto|cpu|cuda`` -> the device a process runs on (torch imported only when called)."""

from __future__ import annotations

from typing import Any

from simcal.core.errors import input_error

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, local_rank: int = 0) -> Any:
    """This rank's ``torch.device``; asking for CUDA where there is none is an input error."""
    import torch

    if name not in DEVICES:
        raise input_error(None, f"unknown --device {name!r}", f"choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise input_error(None, "--device cuda was asked for but no CUDA device is available",
                          "use --device cpu or auto")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device(f"cuda:{local_rank}")
    return torch.device("cpu")


def resolve_amp(amp: str, device: Any) -> bool:
    """``--amp on|off|auto`` -> whether to autocast; ``auto`` means on CUDA only."""
    return device.type == "cuda" if amp == "auto" else amp == "on"
