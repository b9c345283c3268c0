#!/usr/bin/env python
r"""Training-step throughput of pyro_mmvae against MultiVae on the same networks and batches.

For the PolyMNIST recipes ``mmvae_plus_polymnist``, ``crmvae_translated_polymnist`` and
``mopoe_polymnist`` (:data:`pyro_mmvae.zoo.PRESETS`), this times one optimizer step of

* **ours**: ``loss = elbo.differentiable_loss(vae.model, vae.guide, batch); loss.backward();
  opt.step(); opt.zero_grad(set_to_none=True)`` with ``torch.optim.Adam(..., foreach=True)``,
  Pyro validation off, the model from :func:`pyro_mmvae.zoo.build_model` and, per variant,
  the networks under ``pyro_mmvae.engine.network_precision`` (``bf16``/``fp16``), compiled
  with ``pyro_mmvae.engine.compile_networks`` (``compile``) or with
  ``vae.decoder_batching`` set (``split``/``stacked``);
* **MultiVae** (1.0.3, the peer library): what its ``BaseTrainer`` does per batch,
  ``out = model(inputs, epoch=...); opt.zero_grad(); out.loss.backward(); opt.step()`` with
  ``torch.optim.Adam`` (the trainer's default, ``amsgrad`` as in the recipe), the model
  built from the recipe's settings (:func:`multivae_model`) with our ResNet encoders and
  decoders ported into this file (:class:`PolyMNISTResNetEncoder`, ...; same layers, same
  parameter names and counts; ``tests/test_throughput_script.py`` checks that they compute
  exactly what ``pyro_mmvae.nets.polymnist`` computes).

Same work on both sides: the same random PolyMNIST-shaped batches (fixed seed, values in
[0, 1], checksummed), the same batch size, thread count (``torch.set_num_threads`` and
``OMP_NUM_THREADS``) and device. Each side runs in its own **worker process** — ours with
this interpreter, MultiVae's with ``--multivae-python`` (its own virtual environment, see
below), so neither library is imported into the other's process. Workers take commands on
stdin; the parent interleaves the timed steps of all workers of one (recipe, batch) one step
at a time, in an order that rotates every round, so all of them see the same machine load.
Every worker prints its parameter count and the FLOPs of one forward+backward
(``torch.utils.flop_counter.FlopCounterMode``, counted on the eager fp32 networks) to show
the work is the same. Peak memory is the worker's own high-water mark
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``; on CUDA also
``torch.cuda.max_memory_allocated``), one fresh worker per (recipe, batch, side, variant).

Reported per (recipe, batch, variant): wall-clock and process-CPU step time (median, min,
max over the interleaved steps; the first ``--warmup`` steps, which include compilation, are
timed apart), the ratio ours / MultiVae of the medians, peak RSS of both workers, GFLOP per
step and parameter counts of both sides, the machine's CPU model and flags and its load
average (``os.getloadavg``) before and after.

MultiVae in its own virtual environment (never a dependency of this project)::

    bash benchmarks/multivae_env.sh /work/mv-venv     # torch pinned to ours, multivae==1.0.3

Run (CPU, one thread; what benchmarks/results/throughput_cpu.md holds: on a 2-core EPYC
shared with other jobs one fp32 MMVAE+ step at batch 32 takes ~13 s of CPU time, a compiled
run adds ~3 minutes of compilation, and a bf16 step on a CPU without AVX512-BF16/AMX is more
than 10x slower than fp32)::

    OMP_NUM_THREADS=1 python benchmarks/throughput.py --multivae-python /work/mv-venv/bin/python \
        --batches 32 --variants fp32,compile --rounds 3 \
        --json benchmarks/results/throughput_cpu.json --md benchmarks/results/throughput_cpu.md

Variants (``--variants``, comma-separated, parts joined with ``+``): ``fp32`` (default
precision), ``bf16``/``fp16`` (``network_precision``), ``compile``, and ``split``/``stacked``
to override the decoder batching (default: what ``pyro-mmvae train`` picks for the device,
``split`` on CPU), ``channels_last``/``contiguous`` to override the memory format (default:
``auto``, channels_last for the ResNets on the CPU). ``--device cuda`` times CUDA steps
(synchronised) and adds ``torch.cuda.max_memory_allocated``.

``--append`` adds the new rows to an existing ``--json`` (the table is re-rendered from all
rows), so batch sizes can be measured in separate runs. ``--dry-run`` is a seconds-long smoke
test of our side alone (batch 1, one step, no MultiVae).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

RECIPES = ("mmvae_plus_polymnist", "crmvae_translated_polymnist", "mopoe_polymnist")
NUM_MODALITIES = 5
IMAGE_SHAPE = (3, 28, 28)
#: Settings a worker needs from the recipe (resolved in the parent from pyro_mmvae.zoo).
SETTING_KEYS = ("latent_dim", "private_dim", "beta", "likelihood", "likelihood_scale",
                "posterior", "scale_param", "lr", "amsgrad", "num_particles", "estimator")
PRECISIONS = {"fp32": "32", "bf16": "bf16", "fp16": "16"}
VARIANT_FLAGS = ("compile", "split", "stacked", "channels_last", "contiguous")
WORKER_TIMEOUT_S = 3600

# ------------------------------------------------------------------------------------------
# The PolyMNIST ResNets, ported from pyro_mmvae.nets.polymnist for the MultiVae worker (whose
# environment has no pyro_mmvae): same layers, same parameter names, same arithmetic.
# ------------------------------------------------------------------------------------------
_BASE, _TOP, _TOP_SIZE, _LEAK, _GAIN = 64, 256, 7, 0.2, 0.1


class ResidualBlock(nn.Module):
    """shortcut(x) + 0.1 * conv3x3(lrelu(conv3x3(lrelu(x)))), 1x1 shortcut if c_in != c_out."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        c_mid = min(c_in, c_out)
        self.conv_in = nn.Conv2d(c_in, c_mid, kernel_size=3, padding=1)
        self.conv_out = nn.Conv2d(c_mid, c_out, kernel_size=3, padding=1)
        self.shortcut = (nn.Identity() if c_in == c_out
                         else nn.Conv2d(c_in, c_out, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        dx = self.conv_out(F.leaky_relu(self.conv_in(F.leaky_relu(x, _LEAK)), _LEAK))
        return self.shortcut(x) + _GAIN * dx


class _GaussianHead(nn.Module):
    """3x28x28 -> 256x7x7 residual tower, flattened, then linear heads (loc, raw_scale)."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.tower = nn.Sequential(
            nn.Conv2d(3, _BASE, kernel_size=3, padding=1),
            ResidualBlock(64, 64),
            nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
            ResidualBlock(64, 128),
            nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
            ResidualBlock(128, _TOP),
            nn.Flatten(),
        )
        self.loc = nn.Linear(_TOP * _TOP_SIZE * _TOP_SIZE, out_dim)
        self.raw_scale = nn.Linear(_TOP * _TOP_SIZE * _TOP_SIZE, out_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.tower(x)
        return self.loc(h), self.raw_scale(h)


class PolyMNISTResNetEncoder(nn.Module):
    """x -> (loc, raw_scale) [+ (private_loc, private_raw_scale) from a second tower]."""

    def __init__(self, latent_dim: int, private_dim: int = 0) -> None:
        super().__init__()
        self.shared = _GaussianHead(latent_dim)
        self.private = _GaussianHead(private_dim) if private_dim > 0 else None

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.shared(x)
        return out if self.private is None else (*out, *self.private(x))


class PolyMNISTResNetDecoder(nn.Module):
    """z -> (N, 3, 28, 28): linear to 256x7x7, residual blocks with x2 upsampling, conv."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(latent_dim, _TOP * _TOP_SIZE * _TOP_SIZE)
        self.blocks = nn.Sequential(
            ResidualBlock(_TOP, 128),
            nn.Upsample(scale_factor=2, mode="nearest"),
            ResidualBlock(128, _BASE),
            nn.Upsample(scale_factor=2, mode="nearest"),
            ResidualBlock(_BASE, _BASE),
        )
        self.to_image = nn.Conv2d(_BASE, 3, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).reshape(z.shape[0], _TOP, _TOP_SIZE, _TOP_SIZE)
        return self.to_image(F.leaky_relu(self.blocks(h), _LEAK))


# ------------------------------------------------------------------------------------------
# Shared by both workers
# ------------------------------------------------------------------------------------------
def modality_names() -> list[str]:
    return [f"m{i}" for i in range(NUM_MODALITIES)]


def make_batches(batch: int, count: int, seed: int, device: str) -> list[dict[str, Tensor]]:
    """``count`` batches of ``batch`` PolyMNIST-shaped images in [0, 1], from a fixed seed
    (identical on both sides: same torch version, CPU generator)."""
    gen = torch.Generator().manual_seed(seed)
    return [{m: torch.rand(batch, *IMAGE_SHAPE, generator=gen).to(device)
             for m in modality_names()} for _ in range(count)]


def checksum(batches: list[dict[str, Tensor]]) -> str:
    digest = hashlib.sha256()
    for b in batches:
        for m in sorted(b):
            digest.update(b[m].detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def count_parameters(module: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def parse_variant(variant: str) -> dict:
    """``"bf16+compile"`` -> ``{"precision": "bf16", "compile": True, "decoder_batching":
    None, "memory_format": None}``. Parts: one of fp32/bf16/fp16 (default fp32), ``compile``,
    ``split``/``stacked``, ``channels_last``/``contiguous`` (None: what ``auto`` picks)."""
    spec = {"precision": "32", "compile": False, "decoder_batching": None,
            "memory_format": None}
    for part in filter(None, variant.split("+")):
        if part in PRECISIONS:
            spec["precision"] = PRECISIONS[part]
        elif part == "compile":
            spec["compile"] = True
        elif part in ("split", "stacked"):
            spec["decoder_batching"] = part
        elif part in ("channels_last", "contiguous"):
            spec["memory_format"] = part
        else:
            raise ValueError(f"unknown variant part {part!r} in {variant!r}; parts: "
                             f"{', '.join((*PRECISIONS, *VARIANT_FLAGS))} joined with '+'")
    return spec


def _rss_now_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Worker:
    """One side's model, optimizer and batches; ``step()`` is one training step."""

    def __init__(self, cfg: dict) -> None:
        torch.set_num_threads(cfg["threads"])
        torch.manual_seed(cfg["seed"])
        self.cfg = cfg
        self.device = cfg["device"]
        self.batches = make_batches(cfg["batch"], cfg["num_batches"], cfg["seed"], self.device)
        self.index = 0
        self.info: dict = {"side": cfg["side"], "variant": cfg["variant"],
                           "torch": torch.__version__, "threads": torch.get_num_threads(),
                           "data_checksum": checksum(self.batches)}

    def next_batch(self) -> dict[str, Tensor]:
        batch = self.batches[self.index % len(self.batches)]
        self.index += 1
        return batch

    def count_flops(self) -> None:
        """FLOPs of one fp32 forward+backward on the eager networks (no optimizer step; the
        arithmetic of the bf16/fp16 and compiled variants is the same)."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self.fp32_forward_backward(self.next_batch())
        self.zero_grad()
        self.info["flops_per_step"] = int(counter.get_total_flops())

    def timed_steps(self, n: int) -> tuple[list[float], list[float]]:
        wall, cpu = [], []
        for _ in range(n):
            batch = self.next_batch()
            _sync(self.device)
            t0, c0 = time.perf_counter(), time.process_time()
            self.step(batch)
            _sync(self.device)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return wall, cpu

    def memory(self) -> dict:
        out = {"peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               "rss_now_kb": _rss_now_kb()}
        if self.device.startswith("cuda"):
            out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        return out


class OursWorker(Worker):
    """pyro_mmvae's step as ``pyro-mmvae train`` runs it: the model from the zoo, Pyro
    registration and validation off, :func:`pyro_mmvae.engine.build_optimizer` (Adam,
    ``foreach`` on CPU, ``fused`` on CUDA) and :class:`pyro_mmvae.engine.TrainStep` (loss,
    backward, finite check of loss and gradient norm, optimizer step, ``zero_grad``)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        from types import SimpleNamespace

        import pyro

        from pyro_mmvae import engine
        from pyro_mmvae.engine.networks import set_decoder_batching, set_memory_format
        from pyro_mmvae.runs import extra_params
        from pyro_mmvae.train import set_pyro_registration
        from pyro_mmvae.zoo import build_model

        pyro.enable_validation(False)
        pyro.clear_param_store()
        variant = parse_variant(cfg["variant"])
        dataset = SimpleNamespace(name="polymnist", modalities=tuple(modality_names()),
                                  event_shapes={m: torch.Size(IMAGE_SHAPE)
                                                for m in modality_names()})
        spec = build_model(cfg["model"], dataset, preset=cfg["recipe"])
        device = torch.device(self.device)
        vae, self.elbo = spec.vae.to(device), spec.elbo
        batching = variant["decoder_batching"] or "auto"  # as pyro-mmvae train
        set_decoder_batching(vae, batching, device)
        batching = next(iter(vae.mods.values())).decoder_batching  # what auto chose
        formats = set_memory_format(vae, variant["memory_format"] or "auto", device)
        vae.train()
        extras = extra_params(vae, {m: x[:2] for m, x in self.batches[0].items()})
        set_pyro_registration(vae, False)
        params = [*vae.named_parameters(), *extras.items()]
        opt = engine.build_optimizer([p for _, p in params], spec.settings["lr"],
                                     spec.settings["amsgrad"], device)
        self.train_step = engine.TrainStep(vae, spec.elbo, params, opt, device,
                                           precision=variant["precision"])
        self.vae, self.opt = vae, opt
        mods = vae.mods.values()
        self.info.update(
            params=count_parameters(vae),
            params_trainable=count_parameters(vae, trainable=True),
            params_encoders=sum(count_parameters(m.encoder) for m in mods),
            params_decoders=sum(count_parameters(m.decoder) for m in mods),
            extra_pyro_params=sorted(extras),
            decoder_batching=batching,
            memory_format=sorted(set(formats.values())),
            settings={k: spec.settings.get(k) for k in SETTING_KEYS},
        )
        self.count_flops()  # on the eager networks, before compiling
        if variant["compile"]:
            engine.compile_networks(vae)

    def fp32_forward_backward(self, batch: dict[str, Tensor]) -> None:
        self.elbo.differentiable_loss(self.vae.model, self.vae.guide, batch).backward()

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def step(self, batch: dict[str, Tensor]) -> None:
        # as pyro-mmvae train: the sync-free step where the engine chooses it (accelerators)
        if self.train_step.sync_free:
            self.train_step.queue(batch)
        else:
            self.train_step(batch)


def multivae_model(recipe: str, s: dict):
    """MultiVae's model for ``recipe`` with our ported ResNets and the recipe's settings ``s``.

    * MMVAE+: ``MMVAEPlus`` with Laplace/softmax posteriors and priors, learned modality
      priors r_m, K = 1 and the ``iwae_looser`` loss (= the ELBO at K = 1, our ``elbo``
      estimator), beta, Dz = Dw = 32.
    * CRMVAE: ``CRMVAE`` (PoE joint posterior, reconstructions from q(z|X) and each q_m),
      beta' = beta / 2 (MultiVae halves the reconstruction sum, see the preset's comment).
    * MoPoE: ``MoPoE`` over all 31 subsets, one mixture component per data point, beta.

    Likelihood: Laplace with scale 0.75 on every modality, no rescaling. MultiVae's encoders
    return log-variances (``exp(0.5 v)`` scales) where ours map raw outputs with softplus;
    the networks, and so the cost, are the same.
    """
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self, latent_dim: int, private_dim: int = 0) -> None:
            super().__init__()
            self.net = PolyMNISTResNetEncoder(latent_dim, private_dim)

        def forward(self, x):
            out = self.net(x)
            if len(out) == 2:
                return ModelOutput(embedding=out[0], log_covariance=out[1])
            return ModelOutput(embedding=out[0], log_covariance=out[1],
                               style_embedding=out[2], style_log_covariance=out[3])

    class Decoder(BaseDecoder):
        def __init__(self, latent_dim: int) -> None:
            super().__init__()
            self.net = PolyMNISTResNetDecoder(latent_dim)

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z))

    names = modality_names()
    common = dict(n_modalities=len(names), latent_dim=s["latent_dim"],
                  input_dims={m: IMAGE_SHAPE for m in names},
                  decoders_dist={m: s["likelihood"] for m in names},
                  decoder_dist_params={m: {"scale": s["likelihood_scale"]} for m in names},
                  uses_likelihood_rescaling=False)
    if recipe == "mmvae_plus_polymnist":
        from multivae.models import MMVAEPlus, MMVAEPlusConfig

        config = MMVAEPlusConfig(**common, modalities_specific_dim=s["private_dim"],
                                 K=s["num_particles"], loss="iwae_looser", beta=s["beta"],
                                 prior_and_posterior_dist="laplace_with_softmax",
                                 learn_shared_prior=False, learn_modality_prior=True)
        width = s["latent_dim"] + s["private_dim"]
        return MMVAEPlus(config, {m: Encoder(s["latent_dim"], s["private_dim"]) for m in names},
                         {m: Decoder(width) for m in names})
    if recipe == "crmvae_translated_polymnist":
        from multivae.models import CRMVAE, CRMVAEConfig

        config = CRMVAEConfig(**common, beta=s["beta"] / 2)
        cls = CRMVAE
    elif recipe == "mopoe_polymnist":
        from multivae.models import MoPoE, MoPoEConfig

        config = MoPoEConfig(**common, beta=s["beta"])
        cls = MoPoE
    else:
        raise ValueError(f"no MultiVae counterpart for recipe {recipe!r}; "
                         f"choose one of: {', '.join(RECIPES)}")
    return cls(config, {m: Encoder(s["latent_dim"]) for m in names},
               {m: Decoder(s["latent_dim"]) for m in names})


class MultiVaeWorker(Worker):
    """MultiVae's step, as its BaseTrainer does it."""

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        if cfg["variant"] != "fp32":
            raise ValueError(f"the MultiVae side runs fp32 only, got {cfg['variant']!r}")
        from multivae.data.datasets.base import DatasetOutput

        s = cfg["settings"]
        self.model = multivae_model(cfg["recipe"], s).to(self.device)
        self.model.train()
        self.inputs = [DatasetOutput(data=b) for b in self.batches]
        self.opt = torch.optim.Adam(self.model.parameters(), lr=s["lr"], amsgrad=s["amsgrad"])
        self.info.update(
            params=count_parameters(self.model),
            params_trainable=count_parameters(self.model, trainable=True),
            params_encoders=count_parameters(self.model.encoders),
            params_decoders=count_parameters(self.model.decoders),
            multivae=_version("multivae"),
        )
        self.count_flops()

    def next_batch(self):
        inputs = self.inputs[self.index % len(self.inputs)]
        self.index += 1
        return inputs

    def fp32_forward_backward(self, inputs) -> None:
        self.model(inputs, epoch=1).loss.backward()

    def zero_grad(self) -> None:
        self.opt.zero_grad()

    def step(self, inputs) -> None:
        out = self.model(inputs, epoch=1)
        self.opt.zero_grad()
        out.loss.backward()
        self.opt.step()
        float(out.loss)  # the trainer's loss.item()


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def worker_main(classes: dict | None = None) -> None:
    """Serve commands, one JSON object per line on stdin; answer one JSON line each on the
    original stdout (library output goes to stderr). ``classes`` maps a setup's ``side`` to
    its :class:`Worker` class (default: this file's training-step workers; another script,
    e.g. ``benchmarks/peer_coherence.py``, passes its own)."""
    classes = classes or {"ours": OursWorker, "multivae": MultiVaeWorker}
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    worker = None

    def reply(obj) -> None:
        proto.write(json.dumps(obj) + "\n")

    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "setup":
                t0 = time.perf_counter()
                cls = classes[msg["side"]]
                worker = cls(msg)
                worker.info["setup_s"] = time.perf_counter() - t0
                worker.info["rss_after_setup_kb"] = _rss_now_kb()
                warm_wall, warm_cpu = worker.timed_steps(msg["warmup"])
                worker.info["warmup_wall_s"], worker.info["warmup_cpu_s"] = warm_wall, warm_cpu
                reply({"ok": True, "info": worker.info})
            elif msg["cmd"] == "steps":
                wall, cpu = worker.timed_steps(msg["n"])
                reply({"ok": True, "wall": wall, "cpu": cpu})
            elif msg["cmd"] == "memory":
                reply({"ok": True, **worker.memory()})
            elif msg["cmd"] == "quit":
                reply({"ok": True})
                return
            else:
                raise ValueError(f"unknown command {msg['cmd']!r}")
        except Exception as err:  # report to the parent, which prints the worker's log
            import traceback

            traceback.print_exc()
            reply({"ok": False, "error": f"{type(err).__name__}: {err}"})


# ------------------------------------------------------------------------------------------
# Parent: launch workers, interleave, summarise
# ------------------------------------------------------------------------------------------
class WorkerProcess:
    """A worker subprocess running ``script`` (default: this file) with ``--worker``."""

    def __init__(self, python: str, label: str, threads: int, log_dir: Path,
                 script: Path | None = None) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if python == sys.executable:  # ours: import the pyro_mmvae next to this file
            root = str(_repo_root())
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        else:  # MultiVae's environment must not see our package
            env.pop("PYTHONPATH", None)
        self.label = label
        self.log = log_dir / f"{label}.log"
        self._log_file = open(self.log, "w")  # noqa: SIM115 (closed in close())
        script = Path(script or __file__).resolve()
        self.proc = subprocess.Popen([python, str(script), "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log_file, text=True, env=env,
                                     cwd=tempfile.gettempdir())

    def call(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.label} died; log {self.log}:\n{self._tail()}")
        out = json.loads(line)
        if not out.get("ok"):
            raise RuntimeError(f"worker {self.label}: {out.get('error')}; log {self.log}:\n"
                               f"{self._tail()}")
        return out

    def _tail(self) -> str:
        self._log_file.flush()
        return "\n".join(self.log.read_text().splitlines()[-30:])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(cmd="quit")
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log_file.close()


def recipe_settings(recipe: str) -> tuple[str, dict]:
    """(model name, the worker-side settings) of a preset, resolved by pyro_mmvae.zoo."""
    from pyro_mmvae.zoo import PRESETS, resolve_settings

    if recipe not in PRESETS:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    model = PRESETS[recipe]["model"]
    settings = resolve_settings(model, recipe, "polymnist")
    return model, {k: settings.get(k) for k in SETTING_KEYS}


def summarise(times: list[float]) -> dict:
    """Median, min and max in milliseconds."""
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "max_ms": 1e3 * max(times), "n": len(times)}


def run_config(recipe: str, batch: int, variants: list[str], args, log_dir: Path) -> list[dict]:
    """Workers for one (recipe, batch): MultiVae (if given) and ours per variant, interleaved."""
    model, settings = recipe_settings(recipe)
    sides = ([("multivae", "fp32", args.multivae_python)] if args.multivae_python else [])
    sides += [("ours", v, sys.executable) for v in variants]
    workers: dict[tuple[str, str], WorkerProcess] = {}
    infos: dict[tuple[str, str], dict] = {}
    times: dict[tuple[str, str], dict[str, list[float]]] = {}
    try:
        for side, variant, python in sides:
            key = (side, variant)
            label = f"{recipe}-b{batch}-{side}-{variant}"
            print(f"[{_now()}] setup {label}", flush=True)
            workers[key] = WorkerProcess(python, label, args.threads, log_dir)
            infos[key] = workers[key].call(
                cmd="setup", side=side, variant=variant, recipe=recipe, model=model,
                settings=settings, batch=batch, threads=args.threads, seed=args.seed,
                device=args.device, num_batches=args.num_batches, warmup=args.warmup)["info"]
            info = infos[key]
            print(f"    params {info['params']:,}  GFLOP/step {info['flops_per_step'] / 1e9:.1f}"
                  f"  setup {info['setup_s']:.1f}s  warmup {_fmt_s(info['warmup_wall_s'])}",
                  flush=True)
            times[key] = {"wall": [], "cpu": []}
        keys = list(workers)
        for r in range(args.rounds):
            order = keys[r % len(keys):] + keys[: r % len(keys)]
            for key in order:
                out = workers[key].call(cmd="steps", n=args.steps)
                times[key]["wall"] += out["wall"]
                times[key]["cpu"] += out["cpu"]
            print(f"[{_now()}] round {r + 1}/{args.rounds}: " + "  ".join(
                f"{k[0]}/{k[1]} {1e3 * times[k]['wall'][-1]:.0f}ms" for k in keys), flush=True)
        memory = {key: w.call(cmd="memory") for key, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    checksums = {info["data_checksum"] for info in infos.values()}
    if len(checksums) != 1:
        raise RuntimeError(f"the workers saw different data: {checksums}")
    theirs = ("multivae", "fp32") if args.multivae_python else None
    rows = []
    for side, variant, _ in sides:
        if side != "ours":
            continue
        key = (side, variant)
        row = {"recipe": recipe, "model": model, "batch": batch, "variant": variant,
               "commit": args.commit, "ours": _side_record(infos[key], times[key], memory[key])}
        if theirs:
            row["multivae"] = _side_record(infos[theirs], times[theirs], memory[theirs])
            for clock in ("wall", "cpu"):
                row[f"ratio_{clock}"] = (row["ours"][clock]["median_ms"]
                                         / row["multivae"][clock]["median_ms"])
            row["ratio_peak_rss"] = (row["ours"]["peak_rss_kb"]
                                     / row["multivae"]["peak_rss_kb"])
        rows.append(row)
    return rows


def _side_record(info: dict, times: dict, memory: dict) -> dict:
    return {**info, "wall": summarise(times["wall"]), "cpu": summarise(times["cpu"]),
            "wall_s": times["wall"], "cpu_s": times["cpu"], **memory}


def _now() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


def _fmt_s(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}s" for v in values) + "]"


def machine_info() -> dict:
    """CPU model, the SIMD flags that matter for conv kernels, core count, load average."""
    model, flags = platform.processor() or "unknown", []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    simd = [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "sse4"))]
    info = {"cpu_model": model, "cpu_simd_flags": sorted(simd), "cpu_count": os.cpu_count(),
            "avx512": any(f.startswith("avx512") for f in flags),
            "amx": any(f.startswith("amx") for f in flags),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def render_markdown(results: dict) -> str:
    """The results table (one row per recipe, batch and variant) and the machine."""
    lines = ["# Training-step throughput: pyro_mmvae vs MultiVae", ""]
    runs = results["runs"]
    for number, run in enumerate(runs, 1):
        m = run["machine"]
        note = f" ({run['note']})" if run.get("note") else ""
        lines += [f"- run {number}, {run['started']}, commit {run.get('commit')}{note}: "
                  f"`{run['command']}`",
                  f"  - CPU: {m['cpu_model']}, {m['cpu_count']} cores; SIMD: "
                  f"{' '.join(m['cpu_simd_flags'])} (AVX-512: {'yes' if m['avx512'] else 'no'}, "
                  f"AMX: {'yes' if m['amx'] else 'no'}); torch {m['torch']}"
                  + (f"; GPU {m['gpu']}" if m.get("gpu") else ""),
                  f"  - device {run['device']}, {run['threads']} thread(s), {run['rounds']} "
                  f"interleaved rounds x {run['steps']} step(s) after {run['warmup']} warm-up "
                  f"step(s); load average (1, 5, 15 min) before "
                  f"{_load(run['load_before'])}, after {_load(run['load_after'])}; "
                  f"wall time {run['wall_s'] / 60:.1f} min"]
    versions = sorted({row["multivae"].get("multivae") or "?" for row in results["rows"]
                       if "multivae" in row})
    if versions:
        lines += [f"- MultiVae {', '.join(versions)} in its own virtual environment "
                  f"(benchmarks/multivae_env.sh), same torch as ours."]
    lines += ["", "Step times are medians over the interleaved steps (min-max in brackets); "
              "ratio = ours / MultiVae of the medians (< 1: we are faster). CPU = process CPU "
              "time of the step, less sensitive than wall time to other processes on a shared "
              "machine. Peak RSS = the worker process's ru_maxrss (imports included).", "",
              "| run | recipe | batch | variant | ours ms (wall) | MultiVae ms (wall) | ratio wall "
              "| ratio CPU | peak RSS MiB ours / MultiVae (ratio) | GFLOP/step ours / MultiVae "
              "| params ours / MultiVae | first step s (ours) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        ours, theirs = row["ours"], row.get("multivae")
        first = ours["warmup_wall_s"][0] if ours["warmup_wall_s"] else float("nan")
        variant = row["variant"]
        layout = [ours["decoder_batching"]] if ours.get("decoder_batching") else []
        layout += ours.get("memory_format") or []
        if layout:
            variant += f" ({', '.join(layout)})"
        cells = [str(row.get("run", 1)), f"`{row['recipe']}`", str(row["batch"]), variant,
                 _ms(ours["wall"])]
        if theirs:
            cells += [_ms(theirs["wall"]), f"**{row['ratio_wall']:.2f}**",
                      f"{row['ratio_cpu']:.2f}",
                      f"{ours['peak_rss_kb'] / 1024:.0f} / {theirs['peak_rss_kb'] / 1024:.0f} "
                      f"({row['ratio_peak_rss']:.2f})",
                      f"{ours['flops_per_step'] / 1e9:.1f} / {theirs['flops_per_step'] / 1e9:.1f}",
                      f"{ours['params']:,} / {theirs['params']:,}"]
        else:
            cells += ["—", "—", "—", f"{ours['peak_rss_kb'] / 1024:.0f} / —",
                      f"{ours['flops_per_step'] / 1e9:.1f} / —", f"{ours['params']:,} / —"]
        cells.append(f"{first:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, table: str) -> None:
    """Write the rendered table to ``path``, keeping the file's hand-written sections.

    The rendered part has no second-level headings; everything of an existing file from its
    first line starting with ``## `` on (the findings written by hand under each run) is
    appended unchanged, so re-rendering after a new run never drops them.
    """
    kept = ""
    if path.exists():
        old = "\n" + path.read_text()
        start = old.find("\n## ")
        kept = old[start + 1:] if start != -1 else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + ("\n" + kept if kept else ""))


def _ms(s: dict) -> str:
    return f"{s['median_ms']:.0f} ({s['min_ms']:.0f}-{s['max_ms']:.0f})"


def _load(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--recipes", default=",".join(RECIPES),
                   help="comma-separated presets (default: the three PolyMNIST recipes)")
    p.add_argument("--batches", default="32", help="comma-separated batch sizes (default 32)")
    p.add_argument("--variants", default="fp32",
                   help="comma-separated variants of our step: fp32, bf16, fp16, compile, "
                        "split, stacked, or combinations with '+' (e.g. bf16+compile)")
    p.add_argument("--multivae-python", default=None,
                   help="python of MultiVae's virtual environment (omit: ours only)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)),
                   help="torch threads of every worker (default: $OMP_NUM_THREADS or 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--steps", type=int, default=1, help="timed steps per worker per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after setup")
    p.add_argument("--num-batches", type=int, default=4, help="distinct batches cycled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--md", type=Path, default=None,
                   help="write the markdown table here (an existing file's hand-written "
                        "'## ' sections are kept)")
    p.add_argument("--append", action="store_true",
                   help="add to the rows of an existing --json instead of replacing them")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="only re-render the table of an earlier --json (to --md and stdout)")
    p.add_argument("--dry-run", action="store_true",
                   help="smoke test: batch 1, one round of one step, no warm-up, ours only")
    args = p.parse_args(argv)
    if args.dry_run:
        args.batches, args.rounds, args.steps, args.warmup, args.num_batches = "1", 1, 1, 0, 1
        args.multivae_python = None
    for name in ("rounds", "steps", "threads", "num_batches"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise ValueError("--warmup must be >= 0")
    for v in args.variants.split(","):
        parse_variant(v)
    for r in args.recipes.split(","):
        if r not in RECIPES:
            raise ValueError(f"unknown recipe {r!r}; choose from {', '.join(RECIPES)}")
    if args.multivae_python and not Path(args.multivae_python).exists():
        raise ValueError(f"--multivae-python {args.multivae_python} does not exist; "
                         f"see benchmarks/multivae_env.sh")
    return args


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_repo_root(),
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker_main()
        return {}
    if args.render:
        results = json.loads(args.render.read_text())
        text = render_markdown(results)
        if args.md:
            write_markdown(args.md, text)
        print(text)
        return results
    # our side (settings here, the workers through PYTHONPATH) uses the package beside this file
    sys.path.insert(0, str(_repo_root()))
    args.commit = _git_commit()
    started, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.time()
    run = {"started": started, "command": " ".join(
               ["OMP_NUM_THREADS=" + str(args.threads), "python", *sys.argv]),
           "machine": machine_info(), "device": args.device, "threads": args.threads,
           "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
           "load_before": list(os.getloadavg()), "dry_run": args.dry_run,
           "commit": args.commit}
    print(f"CPU {run['machine']['cpu_model']}; SIMD {' '.join(run['machine']['cpu_simd_flags'])}"
          f"; load {_load(run['load_before'])}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        log_dir = Path(tmp)
        for batch in (int(b) for b in args.batches.split(",")):
            for recipe in args.recipes.split(","):
                rows += run_config(recipe, batch, args.variants.split(","), args, log_dir)
    run["load_after"], run["wall_s"] = list(os.getloadavg()), time.time() - t0
    old = ({"runs": [], "rows": []} if not (args.append and args.json and args.json.exists())
           else json.loads(args.json.read_text()))
    for row in rows:
        row["run"] = len(old["runs"]) + 1
    results = {"runs": old["runs"] + [run], "rows": old["rows"] + rows}
    text = render_markdown(results)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if args.md:
        write_markdown(args.md, text)
    return results


if __name__ == "__main__":
    main()
