"""Per-modality digit classifiers: training, prediction and an on-disk cache.

Coherence metrics (:mod:`pyro_mmvae.metrics.coherence`) score generated images with one
classifier per modality trained on that modality's real images (as in MMVAE, MoPoE and
MMVAE+). Training is a few epochs of Adam on cross-entropy; all modalities are trained in
the same pass over the data, so each batch is loaded once.

The classifier follows the modality's kind: a :class:`DigitClassifier` for images
(C, H, W), a :class:`~pyro_mmvae.nets.text.TextClassifier` (bag of embeddings + linear) for
token sequences (a dataset's ``vocab_sizes``), a small MLP for other vectors. With presence
masks (missing modalities) each classifier trains and is scored on the rows that observe its
modality.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pyro_mmvae.nets.classifier import DigitClassifier, VectorClassifier
from pyro_mmvae.nets.mlp import check_trailing_shape
from pyro_mmvae.nets.text import TextClassifier

CACHE_ENV = "PYRO_MMVAE_CACHE"
FILE_FORMAT = "pyro_mmvae.ModalityClassifiers"
FILE_VERSION = 1
ARCHITECTURE = "DigitClassifier-v2"  # bump when DigitClassifier changes: old caches go stale
PREDICT_CHUNK = 2048
#: Fingerprinted (with ARCHITECTURE) when a dataset has token or vector modalities.
OTHER_ARCHITECTURES = "TextClassifier-v1-sum|VectorClassifier-v1"


class ModalityClassifiers:
    """One :class:`DigitClassifier` per modality, plus their test accuracies.

    Args:
        classifiers: modality name -> trained classifier.
        test_accuracy: modality name -> accuracy on held-out real images (fraction in [0, 1]).
        info: free-form facts about the training run (settings, seconds, dataset name).
    """

    def __init__(
        self,
        classifiers: Mapping[str, DigitClassifier],
        test_accuracy: Mapping[str, float] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        if not classifiers:
            raise ValueError("ModalityClassifiers needs at least one classifier.")
        self.nets = nn.ModuleDict(dict(classifiers))
        self.test_accuracy: dict[str, float | None] = dict(test_accuracy or {})
        self.info: dict[str, Any] = dict(info or {})
        self.nets.eval()

    @property
    def names(self) -> tuple[str, ...]:
        """Modalities that have a classifier."""
        return tuple(self.nets.keys())

    @property
    def num_classes(self) -> int:
        """The number of classes the classifiers predict."""
        return next(iter(self.nets.values())).num_classes

    @property
    def device(self) -> torch.device:
        """The device the classifiers' parameters live on."""
        return next(self.nets.parameters()).device

    def to(self, device: torch.device | str) -> ModalityClassifiers:
        """Move every classifier to ``device`` (in place); returns self.

        Args:
            device: the target device (e.g. ``"cpu"``, ``"cuda:0"``).
        """
        self.nets.to(device)
        return self

    def _net(self, name: str) -> DigitClassifier:
        if name not in self.nets:
            raise ValueError(
                f"no classifier for modality {name!r}; classifiers exist for {list(self.names)}. "
                "Train them on a dataset that has this modality."
            )
        return self.nets[name]

    @torch.no_grad()
    def logits(self, name: str, x: Tensor) -> Tensor:
        """Class logits (B, num_classes) of images ``x`` (B, C, H, W), clamped to [0, 1] first.

        Generated images are decoder means, which may leave [0, 1] slightly; real images are
        unchanged by the clamp. Runs in eval mode, in chunks, on the classifiers' device.

        Args:
            name: the modality whose classifier to use.
            x: inputs of that modality ``(B, ...)``: images ``(B, C, H, W)`` in [0, 1], token
                ids or vectors for the other classifier kinds.
        """
        net = self._net(name)
        was_training = net.training
        net.eval()
        try:
            x = _prepare_input(net, x, self.device)
            chunks = [net(part) for part in x.split(PREDICT_CHUNK)] if len(x) else [net(x)]
            return torch.cat(chunks)
        finally:
            net.train(was_training)

    @torch.no_grad()
    def features(self, name: str, x: Tensor) -> Tensor:
        """Penultimate-layer features (B, F) of images ``x`` (the flattened conv map the
        linear head reads; F = 1024 for 28x28 inputs), clamped to [0, 1] first, eval mode.

        Args:
            name: the modality whose classifier to use.
            x: inputs of that modality ``(B, ...)``, trailing shape the classifier's input shape.
        """
        net = self._net(name)
        was_training = net.training
        net.eval()
        try:
            check_trailing_shape(x, net.in_shape, f"classifier of {name!r}")
            x = _prepare_input(net, x, self.device)
            chunks = [net.features(part) for part in x.split(PREDICT_CHUNK)] if len(x) else [
                net.features(x)]
            return torch.cat(chunks)
        finally:
            net.train(was_training)

    def predict(self, name: str, x: Tensor) -> Tensor:
        """Predicted class (LongTensor (B,), on the classifiers' device) for images ``x``.

        Args:
            name: the modality whose classifier to use.
            x: inputs of that modality ``(B, ...)``, as in :meth:`logits`.
        """
        return self.logits(name, x).argmax(dim=-1)

    def accuracy(self, dataset: Any, batch_size: int = 512) -> dict[str, float | None]:
        """Accuracy of each classifier on the real data of ``dataset`` (modalities in common;
        with presence masks, on the rows that observe the modality; ``None``, not measurable,
        for a modality that no row observes).

        Args:
            dataset: a labelled multimodal dataset (``batches`` yields ``(batch, labels)``);
                must not be empty.
            batch_size: data points per forward pass (default 512).

        Returns:
            Modality name -> fraction correct in [0, 1], or ``None`` when not measurable.
        """
        correct = dict.fromkeys(self.names, 0)
        seen = dict.fromkeys(self.names, 0)
        total = 0
        for batch, labels in dataset.batches(batch_size, device=self.device):
            labels = labels.to(self.device)
            mask = getattr(batch, "mask", None)
            for name in self.names:
                if name in batch:
                    x, y = batch[name], labels
                    if mask is not None:
                        x, y = x[mask[name]], y[mask[name]]
                    correct[name] += int((self.predict(name, x) == y).sum())
                    seen[name] += len(y)
            total += len(labels)
        if total == 0:
            raise ValueError("cannot measure accuracy on an empty dataset.")
        return {name: correct[name] / seen[name] if seen[name] else None
                for name in self.names if name in dataset.modalities}

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the classifiers to ``path`` atomically (temporary file + ``os.replace``).

        Args:
            path: the file to write; missing parent folders are created.

        Returns:
            ``path`` as a :class:`~pathlib.Path`.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "architecture": ARCHITECTURE,
            "in_shapes": {n: list(net.in_shape) for n, net in self.nets.items()},
            "kinds": {n: _net_kind(net) for n, net in self.nets.items()},
            "num_classes": self.num_classes,
            "state_dicts": {n: _cpu_state(net) for n, net in self.nets.items()},
            "test_accuracy": self.test_accuracy,
            "info": json.loads(json.dumps(self.info, default=str)),
        }
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(payload, handle)
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> ModalityClassifiers:
        """Read classifiers written by :meth:`save`.

        Raises FileNotFoundError if ``path`` does not exist and ValueError if the file is
        corrupt, is not a classifier file, or was written for another architecture.

        Args:
            path: the file written by :meth:`save`.
            device: where to put the classifiers (default ``"cpu"``).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no classifier file at {path}; train classifiers first.")
        try:
            payload = torch.load(path, map_location=device, weights_only=True)
        except Exception as err:
            raise ValueError(
                f"classifier file {path} is corrupt or unreadable ({type(err).__name__}); "
                "delete it and train the classifiers again."
            ) from err
        _check_payload(payload, path)
        try:
            nets = {
                name: _restore_net(state, payload["in_shapes"][name], payload["num_classes"],
                                   (payload.get("kinds") or {}).get(name))
                for name, state in payload["state_dicts"].items()
            }
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise ValueError(
                f"classifier file {path} does not match this version of DigitClassifier "
                f"({err}); delete it and train the classifiers again."
            ) from err
        loaded = cls(nets, payload["test_accuracy"], payload["info"])
        return loaded.to(device)


def _cpu_state(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def _restore_net(state: Mapping[str, Tensor], in_shape: Sequence[int], num_classes: int,
                 kind: Mapping[str, Any] | None = None):
    kind = dict(kind or {"type": "image"})
    if kind["type"] == "tokens":
        net = TextClassifier(in_shape[0], int(kind["vocab_size"]), int(num_classes))
    elif kind["type"] == "vector":
        net = VectorClassifier(tuple(in_shape), int(num_classes))
    else:
        net = DigitClassifier(tuple(in_shape), int(num_classes))
    net.load_state_dict(state, strict=True)
    return net.eval()


def _net_kind(net: nn.Module) -> dict[str, Any]:
    if isinstance(net, TextClassifier):
        return {"type": "tokens", "vocab_size": net.vocab_size}
    return {"type": "vector" if isinstance(net, VectorClassifier) else "image"}


def _prepare_input(net: nn.Module, x: Tensor, device: torch.device) -> Tensor:
    """Token ids as int64; images as float32 clamped to [0, 1] (generated means may leave
    it); vectors as float32."""
    if isinstance(net, TextClassifier):
        return x.to(device).long()
    x = x.to(device, torch.float32)
    return x.clamp(0.0, 1.0) if isinstance(net, DigitClassifier) else x


def classifier_kind(dataset: Any, name: str) -> str:
    """``"tokens"``, ``"image"`` or ``"vector"``: which classifier modality ``name`` gets.

    Args:
        dataset: the dataset; its ``kinds`` (if any) decide, else its ``vocab_sizes`` (token
            modalities), else its ``event_shapes`` (3 dims: image, otherwise vector).
        name: the modality name.
    """
    kinds = getattr(dataset, "kinds", None) or {}
    if name in kinds:
        return kinds[name]
    if name in (getattr(dataset, "vocab_sizes", None) or {}):
        return "tokens"
    return "image" if len(dataset.event_shapes[name]) == 3 else "vector"


def make_classifier(dataset: Any, name: str, num_classes: int) -> nn.Module:
    """The untrained classifier of modality ``name`` (see :func:`classifier_kind`).

    Args:
        dataset: the dataset (its ``event_shapes``, and ``vocab_sizes`` for tokens).
        name: the modality name.
        num_classes: the number of output classes.

    Returns:
        A :class:`DigitClassifier`, ``TextClassifier`` or ``VectorClassifier``.
    """
    shape = tuple(dataset.event_shapes[name])
    kind = classifier_kind(dataset, name)
    if kind == "tokens":
        return TextClassifier(shape[0], int(dataset.vocab_sizes[name]), num_classes)
    if kind == "image":
        return DigitClassifier(shape, num_classes)
    return VectorClassifier(shape, num_classes)


def _check_payload(payload: Any, path: Path) -> None:
    required = ("in_shapes", "num_classes", "state_dicts", "test_accuracy", "info")
    if (
        not isinstance(payload, dict)
        or payload.get("format") != FILE_FORMAT
        or any(key not in payload for key in required)
        or not payload["state_dicts"]
    ):
        raise ValueError(
            f"{path} is not a pyro_mmvae classifier file; delete it or pass the right path."
        )
    if payload.get("version") != FILE_VERSION or payload.get("architecture") != ARCHITECTURE:
        raise ValueError(
            f"classifier file {path} was written by another version (format "
            f"{payload.get('version')}, {payload.get('architecture')}; this is "
            f"{FILE_VERSION}, {ARCHITECTURE}); delete it and train the classifiers again."
        )


# ---------------------------------------------------------------------- training
@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG inside the block without changing the caller's RNG state."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num_threads)``; None changes nothing."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _image_modalities(dataset: Any, modalities: Sequence[str] | None) -> list[str]:
    names = list(dataset.modalities if modalities is None else modalities)
    shapes = dataset.event_shapes
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise ValueError(f"modalities {unknown} are not in the dataset ({list(shapes)}).")
    if not names:
        raise ValueError("no modality to train a classifier for.")
    return names


def _infer_num_classes(*datasets: Any) -> int:
    labels = torch.cat([ds.labels.reshape(-1).cpu() for ds in datasets])
    if labels.numel() == 0:
        raise ValueError("cannot train classifiers on an empty dataset.")
    if int(labels.min()) < 0:
        raise ValueError("labels must be non-negative class indices.")
    return max(int(labels.max()) + 1, 2)


def train_modality_classifiers(
    train_ds: Any,
    test_ds: Any,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 5e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    modalities: Sequence[str] | None = None,
    num_classes: int | None = None,
    num_threads: int | None = 1,
) -> ModalityClassifiers:
    """Train one :class:`DigitClassifier` per image modality and measure its test accuracy.

    Minimises the cross-entropy of the labels with Adam for ``epochs`` passes over
    ``train_ds.batches(batch_size, shuffle=True)``; every batch updates all classifiers.
    The learning rate decays linearly from ``lr`` to 0 over the run (a high start and a
    decay reach ~96% on 6000 PolyMNIST tuples in 3 epochs; a flat 1e-3 reaches ~94%).
    ``seed`` fixes initialisation and batch order (the caller's RNG state is left alone).
    ``num_classes`` defaults to 1 + the largest label seen. Accuracy on ``test_ds`` is in
    ``.test_accuracy`` and the settings and wall time in ``.info``.

    On CPU, training runs with ``torch.set_num_threads(num_threads)`` (restored afterwards;
    ``None`` leaves it alone): these small convolutions gain little from intra-op threads
    and slow down several-fold when the cores are shared with other processes.

    Args:
        train_ds: the labelled training dataset.
        test_ds: the labelled test dataset (must have the trained modalities).
        epochs: passes over ``train_ds``, >= 1 (default 3).
        batch_size: training batch size, >= 1 (default 128).
        lr: initial Adam learning rate, > 0 (default 5e-3), decayed linearly to 0.
        seed: seed of initialisation and batch order (default 0).
        device: where to train (default ``"cpu"``).
        modalities: the modalities to train classifiers for (``None``, the default: all of
            ``train_ds.modalities``).
        num_classes: output classes (``None``, the default: 1 + the largest label, at
            least 2).
        num_threads: torch threads on the CPU during training (default 1; ``None``: leave
            the setting alone).
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(
            f"need epochs >= 1, batch_size >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}."
        )
    device = torch.device(device)
    names = _image_modalities(train_ds, modalities)
    missing = [n for n in names if n not in test_ds.modalities]
    if missing:
        raise ValueError(f"test dataset lacks modalities {missing}.")
    num_classes = num_classes or _infer_num_classes(train_ds, test_ds)
    threads = num_threads if device.type == "cpu" else None
    with _seeded(seed, device), _torch_threads(threads):
        nets = {n: make_classifier(train_ds, n, num_classes).to(device) for n in names}
        start = time.perf_counter()
        _fit(nets, train_ds, epochs, batch_size, lr, seed, device)
        seconds = time.perf_counter() - start
        info = {
            "dataset": getattr(train_ds, "name", "custom"),
            "train_size": len(train_ds),
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "train_seconds": round(seconds, 2),
        }
        classifiers = ModalityClassifiers(nets, info=info)
        classifiers.test_accuracy = classifiers.accuracy(test_ds, batch_size=max(batch_size, 512))
    return classifiers


def _fit(
    nets: Mapping[str, DigitClassifier],
    train_ds: Any,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> None:
    """Adam on cross-entropy, lr decaying linearly to 0; each batch updates every net."""
    optims = {n: torch.optim.Adam(net.parameters(), lr=lr) for n, net in nets.items()}
    total_steps = epochs * math.ceil(len(train_ds) / batch_size)
    schedules = [_linear_decay(optim, total_steps) for optim in optims.values()]
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        batches = train_ds.batches(batch_size, shuffle=True, generator=order, device=device)
        for batch, labels in batches:
            mask = getattr(batch, "mask", None)
            for n, net in nets.items():
                x, y = batch[n], labels
                if mask is not None:  # only the rows that observe modality n
                    x, y = x[mask[n]], y[mask[n]]
                    if len(y) < 2:  # batch norm needs two rows
                        continue
                _train_step(net, optims[n], x, y)
            for schedule in schedules:
                schedule.step()


_TRAINER_OPTIONS = {
    k: p.default
    for k, p in inspect.signature(train_modality_classifiers).parameters.items()
    if k not in ("train_ds", "test_ds", "device")
}


def _linear_decay(optim: torch.optim.Optimizer, total_steps: int) -> Any:
    """Scheduler multiplying the learning rate by 1 - step / total_steps."""
    return torch.optim.lr_scheduler.LambdaLR(optim, lambda step: max(0.0, 1 - step / total_steps))


def _train_step(net: DigitClassifier, optim: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    net.train()
    loss = F.cross_entropy(net(x), y)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    optim.step()


# ---------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """``$PYRO_MMVAE_CACHE`` if set, else ``$XDG_CACHE_HOME/pyro_mmvae`` (~/.cache/pyro_mmvae)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pyro_mmvae"


def _training_settings(kw: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer's keyword defaults overridden by ``kw`` (unknown keys are an error)."""
    allowed = _TRAINER_OPTIONS
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise TypeError(f"unknown classifier training option(s) {unknown}; use {sorted(allowed)}.")
    settings = {**allowed, **kw}
    settings.pop("num_threads")  # affects speed only, not the result
    if settings["modalities"] is not None:
        settings["modalities"] = list(settings["modalities"])
    return settings


def _hash_dataset(h: Any, dataset: Any, samples: int = 64) -> None:
    """Feed size, modality names/shapes, labels and a strided sample of each modality to h."""
    n = len(dataset)
    h.update(f"{n}|{list(dataset.modalities)}".encode())
    h.update(dataset.labels.detach().cpu().contiguous().numpy().tobytes())
    if getattr(dataset, "masks", None) is not None:  # missing modalities change the training
        h.update(dataset.presence().contiguous().numpy().tobytes())
    index = torch.linspace(0, max(n - 1, 0), min(n, samples)).round().long()
    for name in dataset.modalities:
        x = dataset.data[name] if hasattr(dataset, "data") else None
        rows = x[index.to(x.device)] if x is not None else _rows(dataset, name, index)
        h.update(f"{name}{tuple(rows.shape[1:])}{rows.dtype}".encode())
        h.update(rows.detach().cpu().contiguous().numpy().tobytes())


def _rows(dataset: Any, name: str, index: Tensor) -> Tensor:
    return torch.stack([dataset[int(i)][0][name] for i in index])


def dataset_fingerprint(train_ds: Any, test_ds: Any, settings: Mapping[str, Any]) -> str:
    """Short (16 hex) SHA-256 of both datasets' sizes, names, labels, data samples + settings.

    Args:
        train_ds: the training dataset.
        test_ds: the test dataset.
        settings: the training options (JSON-serialisable mapping, hashed with sorted keys).
    """
    h = hashlib.sha256(f"{ARCHITECTURE}|{FILE_VERSION}".encode())
    if any(classifier_kind(train_ds, n) != "image" for n in train_ds.modalities):
        h.update(OTHER_ARCHITECTURES.encode())
    for dataset in (train_ds, test_ds):
        _hash_dataset(h, dataset)
    h.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def get_classifiers(
    train_ds: Any,
    test_ds: Any,
    cache_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    **kw: Any,
) -> ModalityClassifiers:
    """Load cached classifiers for these datasets and settings, or train and cache them.

    The cache file is ``cache_dir / f"classifiers-{train_ds.name}-{fingerprint}.pt"`` where
    the fingerprint (:func:`dataset_fingerprint`) covers both datasets and the training
    options ``kw`` (see :func:`train_modality_classifiers`). ``cache_dir`` defaults to
    :func:`default_cache_dir`. A corrupt or incompatible cache file is reported with a
    warning and replaced by freshly trained classifiers.

    Args:
        train_ds: the labelled training dataset.
        test_ds: the labelled test dataset.
        cache_dir: the cache folder (``None``, the default: :func:`default_cache_dir`).
        device: where to load or train the classifiers (default ``"cpu"``).
        **kw: options of :func:`train_modality_classifiers` (``epochs``, ``batch_size``,
            ``lr``, ``seed``, ``modalities``, ``num_classes``, ``num_threads``).
    """
    settings = _training_settings(kw)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = "".join(c if c.isalnum() or c in "-_." else "_"
                   for c in getattr(train_ds, "name", "custom"))[-80:]
    path = cache_dir / f"classifiers-{name}-{dataset_fingerprint(train_ds, test_ds, settings)}.pt"
    if path.is_file():
        try:
            return ModalityClassifiers.load(path, device=device)
        except ValueError as err:
            warnings.warn(f"{err} Retraining and overwriting it.", stacklevel=2)
    options = {**settings, "num_threads": kw.get("num_threads", 1)}
    classifiers = train_modality_classifiers(train_ds, test_ds, device=device, **options)
    classifiers.info["cache_file"] = str(path)
    classifiers.save(path)
    return classifiers
