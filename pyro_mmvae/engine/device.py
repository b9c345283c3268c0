"""The training and evaluation device by name, and what a figure was measured on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is available, else ``cpu``; ``cuda`` needs a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was requested but PyTorch sees no CUDA GPU; "
                "use --device cpu (or auto)"
            )
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")


def cpu_model() -> str:
    """The CPU's model name (``model name`` of ``/proc/cpuinfo``, e.g. "AMD EPYC 7B13"),
    falling back to :func:`platform.processor` where that file is absent."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_device(device: torch.device | str = "cpu") -> str:
    """One line naming the hardware of a measurement: the GPU's name on CUDA, else the CPU
    model, its core count and torch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
