r"""Host syncs and host->device copies per training step of every model, counted on the CPU.

No accelerator is needed: a :class:`torch.overrides.TorchFunctionMode` (the *fake
accelerator*, :class:`FakeAccelerator`) watches every torch function and tensor method the
step calls and treats the batch's device as if it were an accelerator:

* **device tensors**: everything that exists before the step starts (the batch, the model's
  parameters and buffers, which the engine moves to the device), the results of operations
  on them, and tensors made by factories given a ``device=`` (``torch.zeros(..., device=d)``,
  ``x.new_zeros(...)``, ``torch.ones_like(x)``);
* **host tensors**: tensors a factory made without ``device=`` (``torch.tensor([...])``,
  ``torch.ones(3)``, ``torch.eye(m)``, which land on the CPU on a real accelerator), results of
  ``.cpu()``, ``.to("cpu")``, and operations whose tensor inputs are all host tensors. Tensors an
  objective (not the model) builds in its constructor without a device are host tensors too
  (the engine moves the model, never the objective): :func:`build_for_count` builds the model
  and objective inside the mode and then marks the model's parameters and buffers as device
  tensors.

Counted per step (:class:`Counts`):

* **syncs** (the host waits for the device): ``item``, ``tolist``, ``__bool__``,
  ``__int__``/``__float__``/``__index__``, ``cpu``/``numpy``, ``nonzero``/``argwhere``/
  one-argument ``where``, ``masked_select``, ``unique``, ``equal``/``allclose``, and indexing
  with a boolean tensor (a data-dependent shape) -- each on a *device* tensor only (reading a
  host tensor costs nothing);
* **copies** (host -> device): ``torch.tensor``/``as_tensor`` of host data with ``device=``,
  ``.to(device)``/``.cuda()`` of a host tensor, and indexing a device tensor with a Python
  list or a host tensor (torch copies the index to the device);
* **mismatches**: an operation mixing a host tensor of one element or more dimensions with
  device tensors (an error on a real accelerator: ``Expected all tensors to be on the same
  device``); 0-d host tensors are allowed, as torch allows them.

Each event records where it happened (the innermost ``pyro_mmvae`` frame), and is booked to
the engine (``pyro_mmvae/engine/...``: the synchronous step's one ``tolist()`` of loss and
gradient norm; the sync-free step of an accelerator, ``TrainStep.queue``, has none)
or to the model and objective (everything else, the budget of
``tests/test_fake_accelerator.py``). Branches on ``device.type == "cpu"`` in the library are
sent down their accelerator path with
:func:`pyro_mmvae.distributions.experts.set_accelerator_check` when the library has it.

Run ``OMP_NUM_THREADS=1 python benchmarks/host_syncs.py`` (``--json PATH`` to save the counts,
``--before PATH`` to print them beside counts saved earlier).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parents[1]

_SYNC_METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu",
                 "numpy", "nonzero", "argwhere", "masked_select", "unique",
                 "unique_consecutive", "equal", "allclose", "is_nonzero", "__contains__",
                 "__format__")
SYNC_FUNCTIONS = {getattr(torch.Tensor, n) for n in _SYNC_METHODS if hasattr(torch.Tensor, n)}
SYNC_FUNCTIONS |= {torch.nonzero, torch.argwhere, torch.masked_select, torch.unique,
                   torch.unique_consecutive, torch.equal, torch.allclose, torch.is_nonzero}
#: Factories whose result lands on the default (host) device unless given ``device=``.
FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray, torch.zeros, torch.ones,
             torch.empty, torch.full, torch.eye, torch.arange, torch.linspace, torch.logspace,
             torch.rand, torch.randn, torch.randint, torch.randperm, torch.from_numpy,
             torch.scalar_tensor}
DATA_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray, torch.from_numpy}
MOVES = {torch.Tensor.to, torch.Tensor.cuda}
INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put_,
            torch.Tensor.index_put}
_HOST = "_fake_accelerator_host"


def is_host(t: Tensor) -> bool:
    """Whether the fake accelerator treats ``t`` as a host (CPU) tensor."""
    return bool(getattr(t, _HOST, False))


def _mark(out: Any, host: bool) -> None:
    for t in tree_flatten(out)[0]:
        if isinstance(t, Tensor):
            try:
                if host:
                    setattr(t, _HOST, True)
                elif is_host(t):
                    delattr(t, _HOST)
            except (AttributeError, RuntimeError):  # e.g. an immutable tensor subclass
                pass


def _target_device(args: tuple, kwargs: dict) -> str | None:
    """``"host"``, ``"device"`` or None (no device change) for ``Tensor.to``/``cuda``."""
    candidates = list(args[1:]) + [kwargs.get("device")]
    for c in candidates:
        if isinstance(c, str):
            return "host" if c.startswith("cpu") else "device"
        if isinstance(c, torch.device):
            return "device"  # the batch's device is the (fake) accelerator
        if isinstance(c, Tensor):
            return "host" if is_host(c) else "device"
    return None


def _where() -> str:
    """``path:line`` of the innermost frame in the library (else the script's caller)."""
    frame = sys._getframe(2)
    fallback = None
    while frame is not None:
        name = frame.f_code.co_filename.replace("\\", "/")
        if "/pyro_mmvae/" in name and "/benchmarks/" not in name:
            return f"pyro_mmvae/{name.split('/pyro_mmvae/', 1)[1]}:{frame.f_lineno}"
        if fallback is None and "host_syncs" not in name and "/torch/" not in name:
            fallback = f"{Path(name).name}:{frame.f_lineno}"
        frame = frame.f_back
    return fallback or "?"


@dataclass
class Counts:
    """Events of one counted stretch, each as ``(kind, what, where)``."""

    events: list[tuple[str, str, str]] = field(default_factory=list)

    def of(self, kind: str, engine: bool | None = None) -> int:
        """How many events of ``kind`` (``"sync"``, ``"copy"``, ``"mismatch"``); with
        ``engine`` True/False only those booked to the engine / to model and objective."""
        return sum(1 for k, _, where in self.events if k == kind and (
            engine is None or where.startswith("pyro_mmvae/engine/") == engine))

    def summary(self) -> dict[str, Any]:
        """Counts by kind and owner, and the distinct places with their counts."""
        places = Counter(f"{k} {what} @ {where}" for k, what, where in self.events)
        return {"syncs": self.of("sync", engine=False), "copies": self.of("copy", engine=False),
                "mismatches": self.of("mismatch"), "engine_syncs": self.of("sync", engine=True),
                "engine_copies": self.of("copy", engine=True), "places": dict(places)}


class FakeAccelerator(TorchFunctionMode):
    """Count host syncs, host->device copies and device mismatches (see the module docstring).

    ``with FakeAccelerator() as fake: step(batch)`` then ``fake.counts``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts = Counts()

    def _record(self, kind: str, func) -> None:
        self.counts.events.append((kind, getattr(func, "__name__", str(func)), _where()))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            out = func(*args, **kwargs)
            device = kwargs.get("device")
            data = args[0] if args else kwargs.get("data")
            if device is None:
                _mark(out, host=True)
            elif func in DATA_FACTORIES and not (isinstance(data, Tensor)
                                                 and not is_host(data)):
                self._record("copy", func)  # host data -> device
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        host = [t for t in inputs if is_host(t)]
        device = [t for t in inputs if not is_host(t)]
        name = getattr(func, "__name__", "")
        if func in MOVES:
            out = func(*args, **kwargs)
            target = "device" if func is torch.Tensor.cuda else _target_device(args, kwargs)
            source_host = is_host(args[0])
            if target == "device" and source_host:
                self._record("copy", func)
            elif target == "host" and not source_host:
                self._record("sync", func)
            _mark(out, host=(target == "host") or (target is None and source_host))
            return out
        if func in SYNC_FUNCTIONS or (func is torch.where and len(args) + len(kwargs) == 1):
            if args and isinstance(args[0], Tensor) and not is_host(args[0]):
                self._record("sync", func)
            out = func(*args, **kwargs)
            _mark(out, host=name in ("cpu", "numpy") or bool(args) and is_host(args[0]))
            return out
        if func in INDEXING and args and isinstance(args[0], Tensor) and not is_host(args[0]):
            index = args[1] if len(args) > 1 else kwargs.get("indices")
            parts = index if isinstance(index, tuple) else (index,)
            for part in parts:
                if isinstance(part, list):
                    self._record("copy", func)
                elif isinstance(part, Tensor):
                    if part.dtype == torch.bool and part.dim() > 0:
                        self._record("sync", func)  # data-dependent shape
                    if is_host(part):
                        self._record("copy", func)
            if func is torch.Tensor.__setitem__ and len(args) > 2 and isinstance(
                    args[2], Tensor) and is_host(args[2]) and args[2].dim() > 0:
                self._record("copy", func)
            out = func(*args, **kwargs)
            _mark(out, host=False)
            return out
        if host and device and any(t.dim() > 0 for t in host):
            self._record("mismatch", func)
        out = func(*args, **kwargs)
        if inputs and name not in ("__get__", "__set__"):
            _mark(out, host=not device)
        return out


# ----------------------------------------------------------------------------- the zoo
#: Models counted: (row name, zoo name, settings beyond the small networks).
CONFIGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("mmvae", "mmvae", {}),
    ("mmvae_plus", "mmvae_plus", {"private_dim": 3}),
    ("mmvae_private", "mmvae_private", {"private_dim": 3}),
    ("cmvae", "cmvae", {"private_dim": 3, "cmvae_clusters": 3}),
    ("mopoe", "mopoe", {}),
    ("mopoe_stratified", "mopoe", {"subset_sampling": "stratified"}),
    ("mvae", "mvae", {}),
    ("jmvae", "jmvae", {"joint_features": 8}),
    ("telbo", "telbo", {"joint_features": 8}),
    ("mvtcae", "mvtcae", {}),
    ("crmvae", "crmvae", {}),
    ("crmvae_stopgrad", "crmvae", {"decoder_stop_gradient": True}),
    ("jnf", "jnf", {"joint_features": 8, "jnf_flow_hidden": (8,)}),
    ("jnf_dcca", "jnf_dcca", {"joint_features": 8, "jnf_flow_hidden": (8,),
                              "jnf_dcca_dim": 3}),
    ("mhvae", "mhvae", {"hier_modality_dim": 3}),
    ("nexus", "nexus", {"hier_modality_dim": 3, "nexus_message_dim": 4}),
    ("dmvae", "dmvae", {"private_dim": 3}),
    ("cvae", "cvae", {"joint_features": 8}),
)
SMALL = {"hidden": (16,), "latent_dim": 4}
NUM_MODALITIES = 5
BATCH = 8


def tiny_dataset(num: int = 32, modalities: int = NUM_MODALITIES, seed: int = 0):
    """A synthetic dataset of ``modalities`` tiny 1x4x4 float images in [0, 1]."""
    from pyro_mmvae.data.base import MultimodalTensorDataset

    g = torch.Generator().manual_seed(seed)
    data = {f"m{i}": torch.rand(num, 1, 4, 4, generator=g) for i in range(modalities)}
    return MultimodalTensorDataset(data, torch.arange(num) % 10, name="tiny")


def masked_batch(batch: dict[str, Tensor], seed: int = 1) -> dict[str, Tensor]:
    """``batch`` as a :class:`~pyro_mmvae.data.base.MaskedBatch` with about half of the
    modalities missing in each row (every row keeps at least one)."""
    from pyro_mmvae.data.base import MaskedBatch, missing_masks

    names = list(batch)
    rows = next(iter(batch.values())).size(0)
    present = missing_masks(torch.ones(len(names), rows, dtype=torch.bool), 0.5, seed)
    mask = {n: present[i].clone() for i, n in enumerate(names)}
    return MaskedBatch({n: torch.where(mask[n].view(-1, 1, 1, 1), x, torch.zeros(()))
                        for n, x in batch.items()}, mask)


@contextlib.contextmanager
def accelerator_paths():
    """Send the library's ``device.type == "cpu"`` branches down their accelerator path,
    where the library has that switch (``distributions.experts.set_accelerator_check``)."""
    from pyro_mmvae.distributions import experts

    setter = getattr(experts, "set_accelerator_check", None)
    if setter is None:
        yield
        return
    previous = setter(lambda device: True)
    try:
        yield
    finally:
        setter(previous)


def build_for_count(zoo_name: str, dataset, seed: int = 0, precision: str = "32",
                    **settings: Any):
    """``(vae, elbo, step)``: the model, objective and engine step as ``train`` builds them
    (networks in ``precision``), with host/device marks as on an accelerator (see the module
    docstring)."""
    from pyro_mmvae.engine import TrainStep
    from pyro_mmvae.engine.optim import build_optimizer
    from pyro_mmvae.runs import extra_params
    from pyro_mmvae.zoo import build_model

    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    with FakeAccelerator():
        spec = build_model(zoo_name, dataset, **{**SMALL, **settings})
    vae = spec.vae
    for t in (*vae.parameters(), *vae.buffers()):
        _mark(t, host=False)  # the engine moves the model to the device
    vae.train()
    batch = next(iter(dataset.batches(BATCH)))[0]
    extras = extra_params(vae, batch)
    vae.pyro_register = False  # as train.set_pyro_registration: the engine owns the params
    params = [*vae.named_parameters(), *extras.items()]
    optimizer = build_optimizer([p for _, p in params], 1e-3, False, torch.device("cpu"))
    step = TrainStep(vae, spec.elbo, params, optimizer, torch.device("cpu"),
                     precision=precision)
    return vae, spec.elbo, step


def count_step(zoo_name: str, settings: dict[str, Any] | None = None, masked: bool = False,
               steps: int = 2, seed: int = 0, precision: str = "32") -> dict[str, Any]:
    """Syncs, copies and mismatches of one engine step (the most over ``steps`` steps), after
    one step with Pyro validation on (the engine validates the first step of a run only)."""
    dataset = tiny_dataset()
    _, _, step = build_for_count(zoo_name, dataset, seed, precision, **(settings or {}))
    batches = [b for b, _ in dataset.batches(BATCH)]
    if masked:
        batches = [masked_batch(b, seed=i) for i, b in enumerate(batches)]
    was = pyro.poutine.util.is_validation_enabled()
    worst: dict[str, Any] | None = None
    try:
        with warnings.catch_warnings(), accelerator_paths():
            warnings.filterwarnings("ignore", message=".*requires_grad=False")
            pyro.enable_validation(True)
            step(batches[0])
            pyro.enable_validation(False)
            for i in range(steps):
                with FakeAccelerator() as fake:
                    step(batches[1 + i % (len(batches) - 1)])
                summary = fake.counts.summary()
                if worst is None or (summary["syncs"] + summary["copies"]
                                     > worst["syncs"] + worst["copies"]):
                    worst = summary
    finally:
        pyro.enable_validation(was)
    assert worst is not None
    return worst


def count_all(masked: bool = False) -> dict[str, dict[str, Any]]:
    """:func:`count_step` of every model of :data:`CONFIGS`."""
    return {row: count_step(name, settings, masked=masked) for row, name, settings in CONFIGS}


def table(after: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """A markdown table: model, syncs (and copies) per step before and after."""
    lines = ["| model | batch | syncs before | syncs after | H2D copies before | "
             "H2D copies after | mismatches after | engine syncs |",
             "|---|---|---|---|---|---|---|---|"]
    for variant in ("complete", "masked"):
        for row, counts in after.get(variant, {}).items():
            old = (before or {}).get(variant, {}).get(row, {})
            lines.append(f"| {row} | {variant} | {old.get('syncs', '-')} | {counts['syncs']} | "
                         f"{old.get('copies', '-')} | {counts['copies']} | "
                         f"{counts['mismatches']} | {counts['engine_syncs']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the counts to this JSON file")
    parser.add_argument("--key", default="after", help="key of the counts in --json")
    parser.add_argument("--before", type=Path, help="JSON with 'before' counts to compare")
    parser.add_argument("--places", action="store_true", help="print where each event is")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    counts = {"complete": count_all(), "masked": count_all(masked=True)}
    before = None
    if args.before and args.before.exists():
        before = json.loads(args.before.read_text()).get("before")
    print(table(counts, before))
    if args.places:
        for variant, rows in counts.items():
            for row, c in rows.items():
                for place, n in c["places"].items():
                    print(f"{variant:8s} {row:18s} {n:3d}  {place}")
    if args.json:
        saved = json.loads(args.json.read_text()) if args.json.exists() else {}
        saved[args.key] = counts
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
