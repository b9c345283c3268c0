"""In-memory multimodal datasets: one tensor per modality plus a label vector.

Images are stored as uint8 (N, C, H, W) and turned into float32 in [0, 1] (x / 255) one batch at
a time, so a 60000 x 5-modality PolyMNIST set takes 0.7 GB instead of 2.8 GB. Integer tensors of
another dtype (int16/32/64) are token ids (N, L), returned as int64.

**Missing modalities.** A dataset may carry a presence mask per modality (bool ``(N,)``, True
where observed). Its batches are then :class:`MaskedBatch` dicts: the same ``{name: x}`` dict
(absent rows hold zeros) with the presence masks as the attribute ``batch.mask``, so
``for batch, labels in ds.batches(...)`` and ``elbo.differentiable_loss(vae.model, vae.guide,
batch)`` work unchanged: the models read ``batch.mask`` when no ``mask`` argument is given.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

Batch = tuple[dict[str, Tensor], Tensor]


class MaskedBatch(dict):
    """A batch ``{name: x}`` whose rows may miss modalities: ``mask`` maps each modality to a
    bool ``(B,)`` tensor, True where the row observes it (absent rows of ``x`` are zeros)."""

    def __init__(self, data: Mapping[str, Tensor], mask: Mapping[str, Tensor]) -> None:
        super().__init__(data)
        self.mask: dict[str, Tensor] = dict(mask)


def batch_mask(batch: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """The presence masks of ``batch`` (a :class:`MaskedBatch`), or None (all present)."""
    return getattr(batch, "mask", None)


def present_rows(batch: Mapping[str, Tensor], names: Sequence[str]) -> Tensor | None:
    """Bool ``(B,)``: the rows of ``batch`` that observe every modality of ``names`` (None:
    every row, the batch has no masks)."""
    mask = batch_mask(batch)
    if mask is None:
        return None
    rows = None
    for name in names:
        rows = mask[name] if rows is None else rows & mask[name]
    return rows


def select_rows(batch: Mapping[str, Tensor], rows: Tensor | None) -> dict[str, Tensor]:
    """The rows ``rows`` (bool ``(B,)``) of every modality of ``batch``, without masks."""
    if rows is None:
        return dict(batch)
    return {name: x[rows] for name, x in batch.items()}


def to_float(x: Tensor) -> Tensor:
    """Return ``x / 255`` as float32 for uint8 input, int64 for other integer input (token
    ids), else ``x`` unchanged (already float)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point() and x.dtype != torch.int64 and x.dtype != torch.bool:
        return x.long()
    return x


def _check_masks(masks: Mapping[str, Tensor] | None, modalities: Sequence[str], n: int,
                 where: str = "") -> dict[str, Tensor] | None:
    """Presence masks as bool ``(N,)`` tensors; every row must observe some modality."""
    if masks is None:
        return None
    unknown = set(masks) - set(modalities)
    if unknown:
        raise ValueError(f"masks for unknown modalities {sorted(unknown)}; the dataset has "
                         f"{list(modalities)}")
    out = {}
    for name in modalities:
        m = torch.as_tensor(masks[name]) if name in masks else torch.ones(n, dtype=torch.bool)
        if m.shape != (n,) or m.dtype != torch.bool:
            raise ValueError(f"the mask of modality {name!r}{where} must be a bool tensor of "
                             f"shape ({n},), got {m.dtype} of shape {tuple(m.shape)}")
        out[name] = m
    if out:
        empty = ~torch.stack(list(out.values())).any(0)
        if bool(empty.any()):
            rows = empty.nonzero().squeeze(1).tolist()
            shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
            raise ValueError(f"{len(rows)} row(s){where} observe no modality at all (every "
                             f"mask is False at row {shown}); drop those rows")
    return out


def missing_masks(present: Tensor, ratio: float, seed: int) -> Tensor:
    """Drop modalities at random: ``present`` bool ``(M, N)`` -> a sub-mask.

    Each observed (modality, row) entry is dropped with probability ``ratio``, independently,
    drawn from ``torch.Generator().manual_seed(seed)``; a row that would lose every observed
    modality keeps one of them, chosen uniformly at random (same generator). So a row never
    ends up empty, and the same ``(present, ratio, seed)`` always gives the same masks.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"missing ratio must be a number in [0, 1), got {ratio!r}")
    generator = torch.Generator().manual_seed(int(seed))
    present = present.cpu().bool()
    drop = torch.rand(present.shape, generator=generator) < ratio
    kept = present & ~drop
    empty = ~kept.any(0)
    # one of the row's observed modalities, uniformly: the argmax of random keys over them
    keys = torch.rand(present.shape, generator=generator).masked_fill(~present, -1.0)
    rescue = torch.zeros_like(kept)
    rescue.scatter_(0, keys.argmax(0, keepdim=True), True)
    return kept | (rescue & empty)


class HeadMixin:
    """``head(size)`` for a dataset with ``__len__`` and ``subset(indices)``."""

    def head(self, size: int | None) -> Any:
        """The first ``size`` tuples (the dataset itself when ``size`` is None or not
        smaller than it)."""
        if size is None or len(self) <= size:
            return self
        return self.subset(torch.arange(size))


class MultimodalTensorDataset(HeadMixin, Dataset):
    """A dataset of N aligned tuples ``({modality: x_m}, label)`` held as whole tensors.

    Args:
        data: modality name -> tensor ``(N, *event_shape)``; uint8 images (N, C, H, W), returned as
            float32 ``x / 255``, or float tensors, returned as they are.
        labels: N integer class labels (stored as int64).
        name: dataset name (e.g. ``"polymnist"``).
        masks: optional modality name -> bool ``(N,)`` presence (True: observed); a modality
            left out is observed in every row. No row may miss every modality.
        vocab_sizes: optional vocabulary size of integer (token) modalities (default: the
            largest id + 1).
    """

    #: The ratio passed to :meth:`with_missing` (0: the dataset's own masks only).
    missing_ratio: float = 0.0
    #: False when the labels are placeholders (a files dataset without ``labels.npy``).
    has_labels: bool = True

    def __init__(self, data: Mapping[str, Tensor], labels: Tensor, name: str = "custom",
                 masks: Mapping[str, Tensor] | None = None,
                 vocab_sizes: Mapping[str, int] | None = None) -> None:
        if not isinstance(data, Mapping) or len(data) == 0:
            raise ValueError("data must be a non-empty dict {modality name: tensor (N, ...)}.")
        self.name = str(name)
        self.data: dict[str, Tensor] = {}
        for modality, x in data.items():
            if not isinstance(x, Tensor):
                raise ValueError(
                    f"modality {modality!r}: expected a torch.Tensor, got {type(x).__name__}."
                )
            if x.dim() < 1:
                raise ValueError(f"modality {modality!r}: tensor needs a leading data dimension N.")
            if x.dtype == torch.bool or x.is_complex():
                raise ValueError(
                    f"modality {modality!r}: dtype {x.dtype} is not supported; store images as "
                    "uint8 (0..255) or float, token ids as int64."
                )
            self.data[str(modality)] = x
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                f"labels must be a 1-D integer tensor (N,), got dtype {labels.dtype} and shape "
                f"{tuple(labels.shape)}."
            )
        self.labels: Tensor = labels.to(torch.int64)
        self._check_sizes()
        self.masks = _check_masks(masks, self.modalities, len(self))
        if self.masks is not None:
            self.masks = {m: v.to(self.labels.device) for m, v in self.masks.items()}
        self.vocab_sizes: dict[str, int] = {}
        for modality, x in self.data.items():
            if x.dtype != torch.uint8 and not x.is_floating_point():
                given = (vocab_sizes or {}).get(modality)
                self.vocab_sizes[modality] = int(given) if given is not None else max(
                    2, int(x.max()) + 1 if x.numel() else 2)
        for modality, x in self.data.items():
            if x.device != self.labels.device:
                raise ValueError(
                    f"modality {modality!r} is on {x.device} but the labels are on "
                    f"{self.labels.device}; keep all tensors on one device."
                )

    # ----------------------------------------------------------------------------- structure
    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names in storage order."""
        return tuple(self.data)

    @property
    def event_shapes(self) -> dict[str, torch.Size]:
        """Shape of one data point of each modality (the tensor shape without N)."""
        return {m: x.shape[1:] for m, x in self.data.items()}

    @property
    def device(self) -> torch.device:
        """Device the stored tensors live on."""
        return self.labels.device

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], int]:
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} tuples.")
        item = {m: to_float(x[index]) for m, x in self.data.items()}
        if self.masks is not None:
            item = MaskedBatch(item, {m: v[index] for m, v in self.masks.items()})
        return item, int(self.labels[index])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{m}: {tuple(s)}" for m, s in self.event_shapes.items())
        return f"{type(self).__name__}(name={self.name!r}, N={len(self)}, {shapes})"

    # ----------------------------------------------------------------------------- iteration
    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        """Yield ``(data, labels)`` mini-batches covering the dataset once (one epoch).

        With presence masks ``data`` is a :class:`MaskedBatch` (absent rows zeroed, the masks
        in ``data.mask``).

        Every batch is one vectorised index into the stored tensors; uint8 modalities are moved to
        ``device`` first and converted to float32 ``x / 255`` there. With ``shuffle`` the order is
        ``torch.randperm(N, generator=generator)``, so a seeded generator gives a fixed order.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        order = order.to(self.device)
        stop = n - n % batch_size if drop_last else n
        target = torch.device(device) if device is not None else self.device
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            batch = {
                m: to_float(x.index_select(0, index).to(target, non_blocking=True))
                for m, x in self.data.items()
            }
            if self.masks is not None:
                mask = {m: v[index].to(target, non_blocking=True) for m, v in self.masks.items()}
                batch = MaskedBatch(_zero_absent(batch, mask), mask)
            yield batch, self.labels[index].to(target, non_blocking=True)

    def subset(self, indices: Sequence[int] | Tensor) -> MultimodalTensorDataset:
        """Return a new dataset holding the tuples at ``indices`` (ints or a boolean mask)."""
        index = torch.as_tensor(indices)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise ValueError(
                    f"a boolean mask must have shape ({len(self)},), got {tuple(index.shape)}."
                )
            index = index.nonzero().squeeze(1)
        if index.is_floating_point():
            raise ValueError("subset indices must be integers or a boolean mask.")
        index = index.reshape(-1).to(device=self.device, dtype=torch.int64)
        n = len(self)
        if index.numel() and (int(index.min()) < -n or int(index.max()) >= n):
            raise IndexError(f"subset indices out of range for a dataset of {n} tuples.")
        data = {m: x[index] for m, x in self.data.items()}
        masks = None if self.masks is None else {m: v[index] for m, v in self.masks.items()}
        return self._like(data, self.labels[index], masks)

    def _like(self, data: Mapping[str, Tensor], labels: Tensor,
              masks: Mapping[str, Tensor] | None) -> MultimodalTensorDataset:
        """A dataset of the same name, vocabularies and missing ratio holding ``data``."""
        out = MultimodalTensorDataset(data, labels, name=self.name, masks=masks,
                                      vocab_sizes=self.vocab_sizes)
        out.missing_ratio = self.missing_ratio
        out.has_labels = getattr(self, "has_labels", True)
        return out

    def presence(self) -> Tensor:
        """Bool ``(M, N)``: which modality each row observes (all True without masks)."""
        if self.masks is None:
            return torch.ones(len(self.modalities), len(self), dtype=torch.bool)
        return torch.stack([self.masks[m].cpu() for m in self.modalities])

    def with_missing(self, ratio: float, seed: int = 0) -> MultimodalTensorDataset:
        """A copy where each observed modality of each row is dropped with probability
        ``ratio`` (seeded, reproducible; a row always keeps one modality), see
        :func:`missing_masks`. The data tensors are shared, only the masks are new."""
        kept = missing_masks(self.presence(), ratio, seed).to(self.device)
        out = self._like(self.data, self.labels,
                         {m: kept[i] for i, m in enumerate(self.modalities)})
        out.missing_ratio = float(ratio)
        return out

    def complete(self) -> MultimodalTensorDataset:
        """The rows that observe every modality (``self`` when there are no masks)."""
        if self.masks is None:
            return self
        return self.subset(self.presence().all(0))

    def to(self, device: torch.device | str) -> MultimodalTensorDataset:
        """Return a dataset with the stored (still uint8) tensors on ``device``.

        Keeping a whole dataset on the GPU makes ``batches`` index there, with no host copies.
        """
        data = {m: x.to(device) for m, x in self.data.items()}
        masks = None if self.masks is None else {m: v.to(device) for m, v in self.masks.items()}
        return self._like(data, self.labels.to(device), masks)

    # ----------------------------------------------------------------------------- checks
    def _check_sizes(self) -> None:
        n = len(self)
        for modality, x in self.data.items():
            if x.shape[0] != n:
                raise ValueError(
                    f"modality {modality!r} has {x.shape[0]} data points but there are {n} "
                    "labels; every modality and the labels need the same N."
                )

    def validate(self) -> None:
        """Raise ``ValueError`` naming the modality if the data are unusable.

        Checks: N > 0; equal N across modalities and labels; no NaN/inf in float modalities; float
        images (event shape (C, H, W)) inside [0, 1].
        """
        if len(self) == 0:
            raise ValueError(f"dataset {self.name!r} is empty (N = 0).")
        self._check_sizes()
        for modality, x in self.data.items():
            if not x.is_floating_point():
                continue
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"modality {modality!r} contains NaN or infinite values.")
            if x.dim() == 4 and (bool((x < 0).any()) or bool((x > 1).any())):
                low, high = float(x.min()), float(x.max())
                raise ValueError(
                    f"modality {modality!r}: float images must lie in [0, 1], found values in "
                    f"[{low:.4g}, {high:.4g}]; divide 0..255 data by 255 or store it as uint8."
                )


def _zero_absent(batch: dict[str, Tensor], mask: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``batch`` with the rows a modality misses set to zero (finite encoder inputs)."""
    out = {}
    for name, x in batch.items():
        keep = mask[name].view(-1, *[1] * (x.dim() - 1))
        out[name] = torch.where(keep, x, x.new_zeros(()))
    return out
