"""The training and evaluation device by name."""

from __future__ import annotations

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
