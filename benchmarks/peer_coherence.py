#!/usr/bin/env python
r"""All-subset conditional coherence: our evaluator beside MultiVae's, on the same work.

Run it through ``benchmarks/evaluation.py --multivae-python PATH`` (see that docstring). This
file is also the worker script of both sides (``--worker``), so at module level it imports
only torch and ``benchmarks/throughput.py``, whose machinery it reuses: the PolyMNIST ResNets
ported for MultiVae, MultiVae's model of a recipe (:func:`throughput.multivae_model`), the
worker base class, protocol and process. MultiVae's environment never sees pyro_mmvae and
ours never imports multivae.

The work, identical on both sides: N random PolyMNIST-shaped tuples (5 modalities of
3x28x28 in [0, 1] and a label in 0..9, from a fixed seed, checksummed by each worker);
conditional coherence C(S -> t) for every source subset S of sizes 1..4 (30 subsets) and
every target t not in S, i.e. 75 generated images per tuple, each classified by a digit
classifier of our ``DigitClassifier`` architecture (ported here as :class:`DigitClassifier`
for MultiVae's side: same layers, same parameter names). The model: MMVAE+ with the
PolyMNIST ResNets of the recipe ``mmvae_plus_polymnist``, untrained on both sides (the cost
does not depend on the weights), fp32, the same torch and thread count.

* **ours**: ``pyro_mmvae.metrics.conditional_coherence(vae, data, classifiers,
  subset_sizes=None, batch_size=256, engine="cached")`` (the library's defaults): each batch
  is encoded once, every subset's posterior is built from the cached experts, each target
  decoded for all subsets at once (``CPU_DECODE_CHUNK`` = 32 latents per call on the CPU
  since 2026-12-01, 4096 before and on accelerators; a worker with ``decode_chunk`` set
  decodes that many per call instead) and classified in one call;
* **MultiVae** 1.0.3: ``CoherenceEvaluator(model, classifiers, data,
  eval_config=CoherenceEvaluatorConfig(num_classes=10)).cross_coherences()`` with its
  defaults (batch 512, one generation per tuple, ``include_recon=False``: only the targets
  outside S are generated), on ``MMVAEPlus``. For every subset S and batch it calls
  ``model.predict(batch, S, [t not in S])``: it encodes the |S| sources again (both towers
  of each encoder, with autograd on: the evaluator sets no ``torch.no_grad``), decodes the
  5 - |S| targets (under ``no_grad``) and classifies each target's images.

So both generate and classify the same 75 images per tuple; MultiVae encodes
sum_k k C(5, k) = 75 source images per tuple where we encode 5. Each worker counts the images
through its encoders, decoders and classifiers (forward hooks) and the FLOPs of the whole
evaluation (``torch.utils.flop_counter.FlopCounterMode``, one untimed pass that is also the
warm-up), so the report separates the ratio into *less work* (FLOP ratio) and *faster work*
(achieved GFLOP/s).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402 (benchmarks/throughput.py, beside this file)

RECIPE = "mmvae_plus_polymnist"
NUM_CLASSES = 10


class DigitClassifier(nn.Module):
    """Port of ``pyro_mmvae.nets.classifier.DigitClassifier`` for 3x28x28 images: three
    stride-2 conv (no bias) + batch norm + ReLU layers 3 -> 16 (4x4) -> 32 (3x3) -> 64 (3x3),
    flatten (64x4x4), dropout 0.2, linear. Same parameter names
    (``tests/test_evaluation_script.py`` checks it computes what ours computes)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size = throughput.IMAGE_SHAPE[0], throughput.IMAGE_SHAPE[1]
        for c_out, k in ((16, 4), (32, 3), (64, 3)):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=k, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in, size = c_out, (size + 2 - k) // 2 + 1
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(64 * size * size, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def make_labels(n: int, seed: int) -> Tensor:
    """The N labels (same on both sides)."""
    return torch.randint(0, NUM_CLASSES, (n,), generator=torch.Generator().manual_seed(seed + 1))


class _RowCounter:
    """Counts the data points entering modules, by kind (forward hooks)."""

    def __init__(self, modules: dict[str, list[nn.Module]]) -> None:
        self.rows = dict.fromkeys(modules, 0)
        self.handles = [m.register_forward_hook(self._hook(kind, 1 if kind == "decoder" else 3))
                        for kind, mods in modules.items() for m in mods]

    def _hook(self, kind: str, event_dims: int):
        def hook(module, inputs, output) -> None:
            x = inputs[0]
            self.rows[kind] += x.numel() // max(1, x[(0,) * (x.dim() - event_dims)].numel())
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _NetworkClock:
    """Process CPU seconds spent inside modules, by kind (forward pre- and post-hooks; a few
    microseconds per call, against milliseconds of convolution)."""

    def __init__(self, modules: dict[str, list[nn.Module]]) -> None:
        self.seconds = dict.fromkeys(modules, 0.0)
        self._start = 0.0
        self.handles = []
        for kind, mods in modules.items():
            for m in mods:
                self.handles += [m.register_forward_pre_hook(self._enter),
                                 m.register_forward_hook(self._exit(kind))]

    def _enter(self, module, inputs) -> None:
        self._start = time.process_time()

    def _exit(self, kind: str):
        def hook(module, inputs, output) -> None:
            self.seconds[kind] += time.process_time() - self._start
        return hook

    def reset(self) -> dict[str, float]:
        out, self.seconds = self.seconds, dict.fromkeys(self.seconds, 0.0)
        return out


def _flops(fn, *args) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*args)
    return int(counter.get_total_flops())


class CoherenceWorker(throughput.Worker):
    """One side's all-subset coherence; ``step`` is one whole evaluation of the N tuples."""

    networks: dict[str, list[nn.Module]]

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)  # threads, seed, the N tuples (one "batch" of N) and checksum
        self.labels = make_labels(cfg["batch"], cfg["seed"]).to(self.device)
        self.info["data_checksum"] += "-" + str(int(self.labels.sum()))
        self.result = None

    def evaluate(self):
        raise NotImplementedError

    def step(self, _batch=None) -> None:
        clock = getattr(self, "clock", None)
        if clock is not None:
            clock.reset()
        self.result = self.evaluate()
        if clock is not None:
            self.network_cpu_s.append(clock.reset())

    def memory(self) -> dict:
        """The worker's memory, and the CPU seconds inside each kind of network per timed
        evaluation (read at the end)."""
        return {**super().memory(), "network_cpu_s": self.network_cpu_s}

    def count_flops(self) -> None:
        """One untimed evaluation (the warm-up) under the flop counter and the row counters,
        plus the FLOPs of one image through each kind of network."""
        from torch.utils.flop_counter import FlopCounterMode

        rows = _RowCounter(self.networks)
        counter = FlopCounterMode(display=False)
        t0 = time.perf_counter()
        with counter:
            self.step()
        self.info["flop_pass_wall_s"] = time.perf_counter() - t0
        rows.remove()
        self.info["flops_per_evaluation"] = int(counter.get_total_flops())
        self.info["images"] = rows.rows
        image = torch.rand(1, *throughput.IMAGE_SHAPE, device=self.device)
        per = {"encoder": _flops(self.networks["encoder"][0], image),
               "classifier": _flops(self.networks["classifier"][0], image),
               "decoder": _flops(self.networks["decoder"][0],
                                 torch.randn(1, self.decoder_width, device=self.device))}
        self.info["flops_per_image"] = per
        self.info["flops_by_network"] = {k: per[k] * rows.rows[k] for k in per}
        self.info["coherence_by_subset_size"] = self.by_size()
        self.info["pairs"] = self.num_pairs()
        self.clock, self.network_cpu_s = _NetworkClock(self.networks), []  # the timed passes


class OursCoherenceWorker(CoherenceWorker):
    """pyro_mmvae's ``conditional_coherence`` over every subset (cached-expert engine)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        from types import SimpleNamespace

        from pyro_mmvae.data import MultimodalTensorDataset
        from pyro_mmvae.metrics.classifiers import ModalityClassifiers
        from pyro_mmvae.nets.classifier import DigitClassifier as OurDigitClassifier
        from pyro_mmvae.zoo import build_model

        names = throughput.modality_names()
        dataset = SimpleNamespace(name="polymnist", modalities=tuple(names),
                                  event_shapes={m: torch.Size(throughput.IMAGE_SHAPE)
                                                for m in names})
        from pyro_mmvae.engine.networks import set_memory_format

        spec = build_model(cfg["model"], dataset, preset=cfg["recipe"])
        self.vae = spec.vae.to(self.device).eval()
        set_memory_format(self.vae, "auto", self.device)  # as load_run (pyro-mmvae evaluate)
        self.engine = cfg.get("engine") or "auto"
        torch.manual_seed(cfg["seed"])
        self.classifiers = ModalityClassifiers({m: OurDigitClassifier() for m in names})
        self.classifiers.to(self.device)
        self.data = MultimodalTensorDataset(self.batches[0], self.labels.cpu(), name="polymnist")
        self.batch_size = cfg.get("batch_size") or 256  # conditional_coherence's default
        chunk = cfg.get("decode_chunk")
        if chunk:  # latents per decoder call (library default: 32 on the CPU, 4096 elsewhere)
            from pyro_mmvae.metrics import coherence

            defaults = list(coherence.cross_generate.__defaults__)
            defaults[-1] = int(chunk)
            coherence.cross_generate.__defaults__ = tuple(defaults)
        mods = [self.vae.mods[m] for m in names]
        self.networks = {"encoder": [m.encoder for m in mods], "decoder": [m.decoder for m in mods],
                         "classifier": [self.classifiers.nets[m] for m in names]}
        self.decoder_width = mods[0].decoder.fc.in_features
        self.info.update(params=throughput.count_parameters(self.vae),
                         params_classifiers=throughput.count_parameters(self.classifiers.nets),
                         evaluator="pyro_mmvae.metrics.conditional_coherence(subset_sizes=None, "
                                   f"batch_size={self.batch_size}, engine={self.engine!r})"
                                   + (f", {chunk} latents per decoder call" if chunk else ""))
        self.count_flops()

    def evaluate(self):
        from pyro_mmvae.metrics import conditional_coherence

        return conditional_coherence(self.vae, self.data, self.classifiers, subset_sizes=None,
                                     batch_size=self.batch_size, device=self.device,
                                     engine=self.engine)

    def by_size(self) -> list[float]:
        return [float(v) for _, v in sorted(self.result["by_subset_size"].items())]

    def num_pairs(self) -> int:
        return sum(len(v) for v in self.result["by_subset"].values())


class MultiVaeCoherenceWorker(CoherenceWorker):
    """MultiVae's ``CoherenceEvaluator.cross_coherences`` with its default configuration."""

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg)
        from multivae.data.datasets.base import MultimodalBaseDataset
        from multivae.metrics import CoherenceEvaluator, CoherenceEvaluatorConfig

        names = throughput.modality_names()
        self.model = throughput.multivae_model(cfg["recipe"], cfg["settings"]).to(self.device)
        torch.manual_seed(cfg["seed"])
        self.clfs = {m: DigitClassifier().to(self.device) for m in names}
        data = MultimodalBaseDataset(data={m: x.cpu() for m, x in self.batches[0].items()},
                                     labels=self.labels.cpu())
        extra = {"batch_size": cfg["batch_size"]} if cfg.get("batch_size") else {}
        config = CoherenceEvaluatorConfig(num_classes=NUM_CLASSES, **extra)
        self.evaluator = CoherenceEvaluator(self.model, self.clfs, data, eval_config=config)
        self.networks = {"encoder": [self.model.encoders[m] for m in names],
                         "decoder": [self.model.decoders[m] for m in names],
                         "classifier": [self.clfs[m] for m in names]}
        self.decoder_width = self.model.decoders[names[0]].net.fc.in_features
        self.info.update(params=throughput.count_parameters(self.model),
                         params_classifiers=sum(throughput.count_parameters(c)
                                                for c in self.clfs.values()),
                         multivae=throughput._version("multivae"),
                         evaluator="multivae.metrics.CoherenceEvaluator(eval_config="
                                   f"CoherenceEvaluatorConfig(num_classes=10"
                                   f"{', batch_size=' + str(extra['batch_size']) if extra else ''}"
                                   f")).cross_coherences(); batch_size {config.batch_size}, "
                                   f"nb_samples_for_cross {config.nb_samples_for_cross}, "
                                   f"include_recon {config.include_recon}")
        self.count_flops()

    def evaluate(self):
        self.evaluator.metrics = {}
        self.evaluator.cross_coherences()
        return dict(self.evaluator.metrics)

    def by_size(self) -> list[float]:
        return [float(self.result[f"mean_coherence_{k}"]) for k in range(1, 5)]

    def num_pairs(self) -> int:
        return sum("_to_" in k for k in self.result)


WORKER_CLASSES = {"ours": OursCoherenceWorker, "multivae": MultiVaeCoherenceWorker}


# ------------------------------------------------------------------------------------------
# Parent: both workers, interleaved
# ------------------------------------------------------------------------------------------
def compare(n: int, rounds: int, threads: int, seed: int, multivae_python: str | None,
            log_dir: Path, batch_size: int | None = None, device: str = "cpu",
            decode_chunks: list[int] | None = None, engines: list[str] | None = None) -> dict:
    """Set up a worker per side, then ``rounds`` rounds of one timed evaluation per side, in
    an order that alternates every round (so both see the same machine load).
    ``decode_chunks`` adds our side with that many latents per decoder call (each a worker
    of its own, labelled ``ours, decode chunk C``), ``engines`` our side with that coherence
    engine (``ours, engine E``; ``ours`` itself runs the library's default, ``auto``)."""
    model, settings = throughput.recipe_settings(RECIPE)
    sides = [("ours", "ours", sys.executable, None, None)]
    sides += [(f"ours, engine {e}", "ours", sys.executable, None, e) for e in engines or []]
    sides += [(f"ours, decode chunk {c}", "ours", sys.executable, c, None)
              for c in decode_chunks or []]
    if multivae_python:
        sides.append(("multivae", "multivae", multivae_python, None, None))
    workers: dict[str, throughput.WorkerProcess] = {}
    infos: dict[str, dict] = {}
    times: dict[str, dict[str, list[float]]] = {}
    loads: list[list[float]] = [list(os.getloadavg())]
    try:
        for number, (side, kind, python, chunk, engine) in enumerate(sides):
            print(f"[{_now()}] setup {side} (model, {n} tuples, one untimed counted pass)",
                  flush=True)
            workers[side] = throughput.WorkerProcess(python, f"coherence-{number}-{kind}",
                                                     threads, log_dir, script=Path(__file__))
            infos[side] = workers[side].call(
                cmd="setup", side=kind, variant="fp32", recipe=RECIPE, model=model,
                settings=settings, batch=n, num_batches=1, threads=threads, seed=seed,
                device=device, warmup=0, batch_size=batch_size, decode_chunk=chunk,
                engine=engine)["info"]
            times[side] = {"wall": [], "cpu": []}
            info = infos[side]
            print(f"    {info['flops_per_evaluation'] / 1e9:.1f} GFLOP, images {info['images']},"
                  f" counted pass {info['flop_pass_wall_s']:.1f} s", flush=True)
        keys = list(workers)
        for r in range(rounds):
            for side in keys[r % len(keys):] + keys[: r % len(keys)]:
                out = workers[side].call(cmd="steps", n=1)
                times[side]["wall"] += out["wall"]
                times[side]["cpu"] += out["cpu"]
            loads.append(list(os.getloadavg()))
            print(f"[{_now()}] round {r + 1}/{rounds}: " + "  ".join(
                f"{k} {times[k]['wall'][-1]:.1f} s wall, {times[k]['cpu'][-1]:.1f} s CPU"
                for k in keys) + f"; load {loads[-1][0]:.2f}", flush=True)
        memory = {side: w.call(cmd="memory") for side, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    if len({info["data_checksum"] for info in infos.values()}) != 1:
        raise RuntimeError(f"the workers saw different tuples: "
                           f"{ {s: i['data_checksum'] for s, i in infos.items()} }")
    out = {"recipe": RECIPE, "model": model, "tuples": n, "rounds": rounds, "threads": threads,
           "device": device, "load_average_per_round": loads,
           "sides": {side: summarise_side(infos[side], times[side], memory[side])
                     for side in infos}}
    if "multivae" in out["sides"]:
        out["comparison"] = compare_sides(out["sides"]["ours"], out["sides"]["multivae"])
        out["comparison_variants"] = {
            side: compare_sides(s, out["sides"]["multivae"])
            for side, s in out["sides"].items() if side.startswith("ours, ")}
    return out


def summarise_side(info: dict, times: dict[str, list[float]], memory: dict) -> dict:
    record = {**info, **memory, "wall_s": times["wall"], "cpu_s": times["cpu"]}
    for clock in ("wall", "cpu"):
        record[f"{clock}_median_s"] = statistics.median(times[clock])
    record["achieved_gflop_per_cpu_s"] = (info["flops_per_evaluation"] / 1e9
                                          / record["cpu_median_s"])
    per_round = memory.get("network_cpu_s") or []
    if per_round:
        record["network_cpu_median_s"] = {k: statistics.median(r[k] for r in per_round)
                                          for k in per_round[0]}
        record["network_cpu_median_s"]["outside the networks"] = statistics.median(
            c - sum(r.values()) for c, r in zip(times["cpu"], per_round, strict=True))
        record["network_gflop_per_cpu_s"] = {
            k: info["flops_by_network"][k] / 1e9 / v
            for k, v in record["network_cpu_median_s"].items()
            if k in info["flops_by_network"] and v > 0}
    return record


def compare_sides(ours: dict, theirs: dict) -> dict:
    """Speed-up = MultiVae's time / ours, split into the FLOP ratio (less work) times the
    ratio of achieved GFLOP per CPU second (faster work): cpu_mv / cpu_ours = (F_mv / F_ours)
    x (rate_ours / rate_mv)."""
    work = theirs["flops_per_evaluation"] / ours["flops_per_evaluation"]
    rate = ours["achieved_gflop_per_cpu_s"] / theirs["achieved_gflop_per_cpu_s"]
    return {"speedup_wall": theirs["wall_median_s"] / ours["wall_median_s"],
            "speedup_cpu": theirs["cpu_median_s"] / ours["cpu_median_s"],
            "speedup_per_round_cpu": [t / o for o, t in zip(ours["cpu_s"], theirs["cpu_s"],
                                                              strict=True)],
            "flop_ratio_less_work": work, "achieved_rate_ratio_faster_work": rate}


def render_markdown(result: dict) -> str:
    """The comparison table, the work done by each side, and the machine."""
    m, sides = result["machine"], result["sides"]
    loads = result["load_average_per_round"]
    lines = ["# All-subset conditional coherence: pyro_mmvae vs MultiVae's evaluator (CPU)", "",
             f"`{result['command']}`", "",
             f"- {result['started']}, commit {result.get('commit')}; CPU {m['cpu_model']} "
             f"({m['cpu_count']} cores), torch {m['torch']}, {result['threads']} torch "
             f"thread(s) per side, fp32, device {result['device']}",
             "- load average (1 min) before the setups and after each round: "
             + ", ".join(f"{x[0]:.2f}" for x in loads) + " — the machine was shared; both "
             "sides ran in separate worker processes, one evaluation at a time, in an order "
             "alternating each round, so both saw the same load",
             f"- work: MMVAE+ with the PolyMNIST ResNets (recipe `{result['recipe']}`, "
             f"untrained), {result['tuples']} random PolyMNIST-shaped tuples (same on both "
             f"sides, checksum {sides['ours']['data_checksum']}), every source subset of "
             "sizes 1..4 (30 subsets, 75 (S, t) pairs), one generated image per pair and "
             "tuple, each classified by a DigitClassifier (same architecture both sides)", ""]
    for side, s in sides.items():
        lines.append(f"- {side}: {s['evaluator']}")
    lines += ["", "| | wall s (median; per round) | CPU s (median) | GFLOP (FlopCounterMode) "
              "| achieved GFLOP per CPU s | images encoded / decoded / classified "
              "| (S, t) pairs | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for side, s in sides.items():
        img = s["images"]
        lines.append(f"| {side} | {s['wall_median_s']:.1f} ("
                     + ", ".join(f"{x:.1f}" for x in s["wall_s"]) + f") | {s['cpu_median_s']:.1f}"
                     f" | {s['flops_per_evaluation'] / 1e9:.1f} | "
                     f"{s['achieved_gflop_per_cpu_s']:.1f} | {img['encoder']} / {img['decoder']} "
                     f"/ {img['classifier']} | {s['pairs']} | {s['peak_rss_kb'] / 1024:.0f} |")
    c = result.get("comparison")
    if c:
        o, t = sides["ours"], sides["multivae"]
        lines += ["", f"**Speed-up of ours over MultiVae: {c['speedup_wall']:.2f}x wall, "
                  f"{c['speedup_cpu']:.2f}x CPU** (medians; per round, CPU: "
                  + ", ".join(f"{x:.2f}x" for x in c["speedup_per_round_cpu"]) + ").", "",
                  f"- less work: MultiVae does {c['flop_ratio_less_work']:.2f}x our FLOPs",
                  f"- faster work: we reach {c['achieved_rate_ratio_faster_work']:.2f}x its "
                  "GFLOP per CPU second",
                  "- FLOPs by network (per-image FLOPs x images through it; GFLOP): "
                  + "; ".join(f"{side} " + ", ".join(
                      f"{k} {v / 1e9:.1f}" for k, v in s["flops_by_network"].items())
                      for side, s in (("ours", o), ("MultiVae", t))),
                  "- per image (MFLOP): " + ", ".join(
                      f"{k} {v / 1e6:.0f}" for k, v in o["flops_per_image"].items())]
        for side, v in result.get("comparison_variants", {}).items():
            lines.append(f"- {side}: **{v['speedup_wall']:.2f}x wall, {v['speedup_cpu']:.2f}x "
                         f"CPU** over MultiVae (rate ratio "
                         f"{v['achieved_rate_ratio_faster_work']:.2f}x)")
    if all("network_cpu_median_s" in s for s in sides.values()):
        lines += ["", "CPU seconds inside each kind of network per evaluation (medians; "
                  "forward hooks) and the GFLOP per CPU second reached there:", "",
                  "| | " + " | ".join(sides["ours"]["network_cpu_median_s"]) + " |",
                  "|---" * (1 + len(sides["ours"]["network_cpu_median_s"])) + "|"]
        for side, s in sides.items():
            rates = s["network_gflop_per_cpu_s"]
            lines.append(f"| {side} | " + " | ".join(
                f"{v:.1f} s" + (f" ({rates[k]:.0f} GFLOP/s)" if k in rates else "")
                for k, v in s["network_cpu_median_s"].items()) + " |")
    full = 10_000 / result["tuples"]
    lines += ["", "Linear extrapolation to the 10,000 tuples of the PolyMNIST test set (CPU "
              "medians x 10,000 / N, one thread): " + "; ".join(
                  f"{side} {s['cpu_median_s'] * full / 3600:.2f} h"
                  for side, s in sides.items()) + "."]
    lines += ["", "Coherence by subset size (untrained models: ~chance, a check that every "
              "subset was evaluated): " + "; ".join(
                  f"{side} " + ", ".join(f"{x:.3f}" for x in s["coherence_by_subset_size"])
                  for side, s in sides.items())]
    return "\n".join(lines) + "\n"


def _now() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


def run(n: int, rounds: int, threads: int, seed: int, multivae_python: str | None,
        command: str, batch_size: int | None = None,
        decode_chunks: list[int] | None = None, engines: list[str] | None = None) -> dict:
    """:func:`compare` with the machine, command and commit recorded."""
    import tempfile

    if multivae_python and not Path(multivae_python).exists():
        raise ValueError(f"--multivae-python {multivae_python} does not exist; see "
                         "benchmarks/multivae_env.sh")
    if n < 1 or rounds < 1 or threads < 1:
        raise ValueError(f"tuples, rounds and threads must be >= 1, got {n}, {rounds}, "
                         f"{threads}")
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="coherence-peer-") as tmp:
        result = compare(n, rounds, threads, seed, multivae_python, Path(tmp), batch_size,
                         decode_chunks=decode_chunks, engines=engines)
    return {"benchmark": "all-subset conditional coherence, pyro_mmvae vs MultiVae",
            "command": command, "started": started, "wall_s": time.time() - t0,
            "commit": throughput._git_commit(), "machine": throughput.machine_info(),
            **result}


def write(result: dict, out_json: Path) -> Path:
    """``out_json`` and the markdown beside it (same stem, ``.md``)."""
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    md = out_json.with_suffix(".md")
    md.write_text(render_markdown(result))
    return md


if __name__ == "__main__" and "--worker" in sys.argv:
    throughput.worker_main(WORKER_CLASSES)
