"""The pre-flight of check.sh: imports, device and data, in seconds, before any long step.

Writes ``--json`` after every check (so a hang or a kill still leaves what passed) and a
human-readable summary on stdout; exits 1 when a check fails. Checks:

* ``imports``: python, torch, pyro, pyro_mmvae and torchvision versions;
* ``device``: the device resolves; on CUDA every GPU's name, compute capability and memory,
  whether it has native bf16 (what ``--precision auto`` picks), and a matmul in fp32 and bf16
  on the run's GPU, synchronised;
* ``distributed``: which ``torch.distributed`` backends exist (gloo, NCCL) and the one a
  two-rank run of this machine uses (:func:`pyro_mmvae.engine.distributed.choose_backend`);
* ``data``: the first batch of ``polymnist-mini`` on the device, and with ``--data DIR`` the
  MNIST files and PolyMNIST backgrounds that ``make-polymnist`` reads.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS: dict[str, Any] = {}


def check(name: str, out: Path | None, run: Callable[[], dict[str, Any]]) -> bool:
    tic = time.perf_counter()
    try:
        result = {"ok": True, **run()}
    except Exception as error:  # noqa: BLE001 - every failure is reported, none stops the rest
        result = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    result["seconds"] = round(time.perf_counter() - tic, 2)
    RESULTS[name] = result
    if out is not None:
        out.write_text(json.dumps(RESULTS, indent=1, default=str) + "\n")
    print(f"{name}: {json.dumps(result, default=str)}", flush=True)
    return result["ok"]


def imports() -> dict[str, Any]:
    import pyro
    import torch
    import torchvision

    import pyro_mmvae

    return {"python": platform.python_version(), "torch": torch.__version__,
            "pyro": pyro.__version__, "pyro_mmvae": pyro_mmvae.__version__,
            "torchvision": torchvision.__version__, "cpus": __import__("os").cpu_count()}


def device(name: str) -> dict[str, Any]:
    import torch

    from pyro_mmvae.engine import resolve_precision
    from pyro_mmvae.engine.device import describe_device, resolve_device

    dev = resolve_device(name)
    info: dict[str, Any] = {"device": str(dev), "described": describe_device(dev),
                            "auto_precision": resolve_precision("auto", dev)}
    if dev.type == "cuda":
        info["gpus"] = [{"name": torch.cuda.get_device_name(i),
                         "capability": list(torch.cuda.get_device_capability(i)),
                         "memory_gib": round(torch.cuda.get_device_properties(i).total_memory
                                             / 2**30, 1)}
                        for i in range(torch.cuda.device_count())]
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(512, 512, device=dev, dtype=dtype)
        tic = time.perf_counter()
        product = (a @ a).float().sum().item()  # .item() synchronises
        info[f"matmul_{str(dtype).removeprefix('torch.')}_ms"] = round(
            1000 * (time.perf_counter() - tic), 2)
        if product != product:
            raise RuntimeError(f"a {dtype} matmul on {dev} gave NaN")
    return info


def distributed(name: str) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    from pyro_mmvae.engine.device import resolve_device
    from pyro_mmvae.engine.distributed import choose_backend

    dev = resolve_device(name)
    if dev.type == "cuda":
        dev = torch.device("cuda", 0)
    return {"available": dist.is_available(), "gloo": dist.is_gloo_available(),
            "nccl": dist.is_nccl_available(), "two_ranks_use": choose_backend(dev, 2)}


def data(name: str, root: str | None) -> dict[str, Any]:
    from pyro_mmvae.data import polymnist_mini
    from pyro_mmvae.engine.device import resolve_device

    batch, _ = next(iter(polymnist_mini("test").batches(8, device=resolve_device(name))))
    info: dict[str, Any] = {"polymnist_mini": {k: list(v.shape) for k, v in batch.items()}}
    if root is not None:
        for folder in ("mnist", "polymnist_backgrounds"):
            path = Path(root) / folder
            files = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
            if not files:
                raise FileNotFoundError(f"{path} is missing or empty (copy ../shared/data "
                                        "there and name it in the device tool's carry)")
            info[folder] = files[:8]
    return info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--data", default=None, help="folder with mnist/ and polymnist_backgrounds/")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    ok = check("imports", args.json, imports)
    ok &= check("device", args.json, lambda: device(args.device))
    ok &= check("distributed", args.json, lambda: distributed(args.device))
    ok &= check("data", args.json, lambda: data(args.device, args.data))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
