"""The training and evaluation device by name, its backend settings, and what a figure was
measured on.

CUDA defaults (:func:`configure_backends`, applied by :class:`~pyro_mmvae.engine.TrainStep`):

* fp32 matrix products in TF32 (``torch.backends.cuda.matmul.allow_tf32``, i.e.
  ``torch.set_float32_matmul_precision("high")``) and TF32 convolutions: on Ampere and later
  GPUs the tensor cores multiply with a 10-bit mantissa and accumulate in fp32, several times
  faster than full fp32; the networks' outputs differ from fp32 by about 1e-3 relative, far
  below the noise of the Monte Carlo objectives. The distributions and the objective are
  elementwise work, untouched.
* ``cudnn.benchmark``: cuDNN times its convolution algorithms on the first call of each shape
  and keeps the fastest (the shapes of a run are fixed) — unless deterministic mode is on.

Deterministic mode (:func:`enable_deterministic`, opt-in): ``torch.use_deterministic_algorithms``,
``cudnn.deterministic`` without ``benchmark``, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, so that
the same seed gives the same bits on the same GPU and software (resume included). Without it a
GPU run is reproducible only up to the order of atomic additions (cuDNN's backward, scatter);
on the CPU training is bit-exact either way.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

DEVICES = ("auto", "cpu", "cuda")

#: cuBLAS workspace setting that makes its kernels deterministic (NVIDIA's documentation).
CUBLAS_WORKSPACE = ":4096:8"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is available, else ``cpu``; ``cuda`` needs a GPU.

    Args:
        name: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (the ``--device`` option).

    Returns:
        The :class:`torch.device`.

    Raises:
        ValueError: for an unknown name, or ``cuda`` when PyTorch sees no GPU.
    """
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


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``flags`` of ``/proc/cpuinfo``, e.g. ``avx512_bf16``); empty
    where that file is absent."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def describe_device(device: torch.device | str = "cpu") -> str:
    """One line naming the hardware of a measurement: the GPU's name on CUDA, else the CPU
    model, its core count and torch's thread count.

    Args:
        device: the device measured on (a :class:`torch.device` or its name); default CPU.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"


def configure_backends(device: torch.device | str) -> None:
    """Set the CUDA defaults of the module docstring for a run on ``device``: TF32 fp32
    matrix products and convolutions, and ``cudnn.benchmark`` unless deterministic algorithms
    are on (:func:`enable_deterministic`). Nothing changes for other devices. The settings
    are process-wide, as torch's are.

    Args:
        device: the run's device (a :class:`torch.device` or its name); only ``cuda`` matters.
    """
    if torch.device(device).type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()


def enable_deterministic() -> None:
    """Opt-in bit-exact mode (``--deterministic``): deterministic torch kernels (an operation
    without one raises, naming itself), ``cudnn.deterministic`` and no ``cudnn.benchmark``,
    and the cuBLAS workspace of :data:`CUBLAS_WORKSPACE`. Call it before the first CUDA
    operation of the process: cuBLAS reads its workspace setting once."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
