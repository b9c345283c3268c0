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

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pyro_mmvae.data.prefetch import close_iterator, maybe_prefetch

Batch = tuple[dict[str, Tensor], Tensor]

#: The largest vocabulary of a token modality (ids in ``[0, MAX_VOCAB)``): 2**20, above the
#: subword vocabularies in use (GPT-2: 50257, multilingual models: about 250000). A larger id
#: is refused when the data are loaded, before an embedding or a Categorical decoder with one
#: row per id (the 2**40 ids of a stray value: terabytes) is built.
MAX_VOCAB = 2**20
#: The most classes labels may name (labels lie in ``[0, MAX_CLASSES)``): 2**16. The
#: coherence classifiers and probes have one output per class up to the largest label, so a
#: label of 10**9 would build a billion-way classifier head; such a label is refused on loading.
MAX_CLASSES = 2**16


def check_vocab_size(size: Any, where: str) -> int:
    """``size`` as an int in ``[2, MAX_VOCAB]``, else a ``ValueError`` naming ``where``.

    Args:
        size: the vocabulary size V of a token modality (ids in ``[0, V)``); an int or NumPy
            integer, not a bool.
        where: what the size belongs to, at the start of the error message (e.g.
            ``"modality 'caption'"`` or the path of a ``.vocab`` file).

    Returns:
        ``int(size)``.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) \
            or not 2 <= size <= MAX_VOCAB:
        raise ValueError(f"{where}: vocabulary size {size!r} must be an integer in "
                         f"[2, {MAX_VOCAB}] (token ids lie in [0, V))")
    return int(size)


class MaskedBatch(dict):
    """A batch ``{name: x}`` whose rows may miss modalities: ``mask`` maps each modality to a
    bool ``(B,)`` tensor, True where the row observes it (absent rows of ``x`` are zeros).

    Args:
        data: modality name -> batch tensor ``(B, *event_shape)`` (float32 images in [0, 1],
            int64 token ids ``(B, L)`` or float vectors), zeros in the absent rows.
        mask: modality name -> bool ``(B,)`` presence (True: observed), on the device of
            ``data``; kept (copied into a dict) as the attribute ``mask``.
    """

    def __init__(self, data: Mapping[str, Tensor], mask: Mapping[str, Tensor]) -> None:
        super().__init__(data)
        self.mask: dict[str, Tensor] = dict(mask)


def batch_mask(batch: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """The presence masks of ``batch`` (a :class:`MaskedBatch`), or None (all present).

    Args:
        batch: a batch dict ``{name: (B, *event_shape)}``, a :class:`MaskedBatch` or a plain
            dict (which has no masks).

    Returns:
        ``batch.mask`` (modality name -> bool ``(B,)``), or None for a plain dict.
    """
    return getattr(batch, "mask", None)


def present_rows(batch: Mapping[str, Tensor], names: Sequence[str]) -> Tensor | None:
    """Bool ``(B,)``: the rows of ``batch`` that observe every modality of ``names`` (None:
    every row, the batch has no masks).

    Args:
        batch: a batch dict ``{name: (B, *event_shape)}``, possibly a :class:`MaskedBatch`.
        names: the modalities that must all be observed; each must be a key of ``batch``.
            An empty sequence gives None.
    """
    mask = batch_mask(batch)
    if mask is None:
        return None
    rows = None
    for name in names:
        rows = mask[name] if rows is None else rows & mask[name]
    return rows


def select_rows(batch: Mapping[str, Tensor], rows: Tensor | None) -> dict[str, Tensor]:
    """The rows ``rows`` (bool ``(B,)``) of every modality of ``batch``, without masks.

    Args:
        batch: a batch dict ``{name: (B, *event_shape)}`` (a :class:`MaskedBatch`'s masks
            are dropped).
        rows: bool ``(B,)`` rows to keep (e.g. from :func:`present_rows`), or None for all.

    Returns:
        A plain dict ``{name: (B', *event_shape)}``, B' the number of True rows.
    """
    if rows is None:
        return dict(batch)
    return {name: x[rows] for name, x in batch.items()}


def to_float(x: Tensor) -> Tensor:
    """Return ``x / 255`` as float32 for uint8 input, int64 for other integer input (token
    ids), else ``x`` unchanged (already float).

    Args:
        x: a tensor of any shape: uint8 pixels in 0..255, integer token ids (int8/16/32/64)
            or float values; bool tensors are returned unchanged.
    """
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point() and x.dtype != torch.int64 and x.dtype != torch.bool:
        return x.long()
    return x


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """``x`` on ``device``. The copy is asynchronous (``non_blocking=True``) only from host
    memory to a CUDA device, where the host-side source is safe to drop at once; every other
    copy, towards the CPU above all, is blocking, so its result can be read straight away (an
    asynchronous GPU -> host copy can be read before it has landed).

    Args:
        x: a tensor on any device (returned as is when already on ``device``).
        device: the target device (a ``torch.device``, not a string).
    """
    if x.device == device:
        return x
    return x.to(device, non_blocking=x.device.type == "cpu" and device.type == "cuda")


def pinned_for(device: torch.device) -> bool:
    """Whether host batches bound for ``device`` are gathered into pinned (page-locked)
    memory: only for a CUDA device, and only where CUDA is available.

    Args:
        device: where the batches go (a ``torch.device``).
    """
    return device.type == "cuda" and torch.cuda.is_available()


def host_rows(x: Tensor, index: Tensor, pin: bool = False) -> Tensor:
    """Rows ``x[index]`` where ``x`` is, in its dtype; with ``pin`` (host ``x`` only) gathered
    straight into a pinned (page-locked) buffer.

    Args:
        x: the stored tensor ``(N, *event_shape)``, any dtype (uint8 images stay uint8).
        index: int64 row indices ``(B,)`` on ``x``'s device.
        pin: gather into pinned host memory (for an asynchronous copy to CUDA); only for a
            CPU ``x``, and only where CUDA is available (see :func:`pinned_for`).

    Returns:
        ``(B, *event_shape)`` in ``x``'s dtype, on ``x``'s device.
    """
    if pin:
        out = torch.empty((len(index), *x.shape[1:]), dtype=x.dtype, pin_memory=True)
        torch.index_select(x, 0, index, out=out)
        return out
    return x.index_select(0, index)


def gather_rows(x: Tensor, index: Tensor, device: torch.device) -> Tensor:
    """Rows ``x[index]`` on ``device``, in ``x``'s dtype (uint8 images cross as uint8, a
    quarter of the bytes of float32, and are converted there by :func:`to_float`).

    From host memory to CUDA the rows are gathered straight into a pinned buffer and copied
    asynchronously (:func:`pinned_for`, :func:`to_device`); PyTorch's pinned-memory allocator
    keeps the buffer alive until the copy has run.

    Args:
        x: the stored tensor ``(N, *event_shape)``, any dtype and device.
        index: int64 row indices ``(B,)`` on ``x``'s device.
        device: the device of the result (a ``torch.device``).

    Returns:
        ``(B, *event_shape)`` in ``x``'s dtype (not yet converted by :func:`to_float`).
    """
    return to_device(host_rows(x, index, x.device.type == "cpu" and pinned_for(device)),
                     device)


def _check_masks(masks: Mapping[str, Tensor] | None, modalities: Sequence[str], n: int,
                 where: str = "", device: torch.device | None = None
                 ) -> dict[str, Tensor] | None:
    """Presence masks as bool ``(N,)`` tensors on ``device`` (default: the first given
    mask's); a modality without a mask is observed everywhere (ones made on that device).
    Every row must observe some modality."""
    if masks is None:
        return None
    unknown = set(masks) - set(modalities)
    if unknown:
        raise ValueError(f"masks for unknown modalities {sorted(unknown)}; the dataset has "
                         f"{list(modalities)}")
    given = {name: torch.as_tensor(masks[name]) for name in modalities if name in masks}
    for name, m in given.items():
        if m.shape != (n,) or m.dtype != torch.bool:
            raise ValueError(f"the mask of modality {name!r}{where} must be a bool tensor of "
                             f"shape ({n},), got {m.dtype} of shape {tuple(m.shape)}")
    if device is None:
        device = next((m.device for m in given.values()), torch.device("cpu"))
    out = {name: given[name].to(device) if name in given
           else torch.ones(n, dtype=torch.bool, device=device) for name in modalities}
    if out and len(given) == len(out):  # a modality without a mask: no row is empty
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
    ends up empty, and the same ``(present, ratio, seed)`` always gives the same masks
    (float32 draws, whatever ``torch.get_default_dtype()`` is).

    Args:
        present: bool ``(M, N)``, modality x row, True where the row observes the modality
            (every row observes at least one); moved to the CPU.
        ratio: probability in ``[0, 1)`` of dropping each observed entry (0: keep them all);
            anything else is a ``ValueError``.
        seed: seed of the CPU generator the draws come from.

    Returns:
        Bool ``(M, N)`` on the CPU, True only where ``present`` is, at least one per row.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"missing ratio must be a number in [0, 1), got {ratio!r}")
    generator = torch.Generator().manual_seed(int(seed))
    present = present.cpu().bool()
    # float32 draws whatever torch's default dtype is (float64 consumes the generator
    # differently and would give other masks)
    drop = torch.rand(present.shape, generator=generator, dtype=torch.float32) < ratio
    kept = present & ~drop
    empty = ~kept.any(0)
    # one of the row's observed modalities, uniformly: the argmax of random keys over them
    keys = torch.rand(present.shape, generator=generator, dtype=torch.float32)
    keys = keys.masked_fill(~present, -1.0)
    rescue = torch.zeros_like(kept)
    rescue.scatter_(0, keys.argmax(0, keepdim=True), True)
    return kept | (rescue & empty)


class HeadMixin:
    """``head(size)`` for a dataset with ``__len__`` and ``subset(indices)``."""

    def head(self, size: int | None) -> Any:
        """The first ``size`` tuples (the dataset itself when ``size`` is None or not
        smaller than it).

        Args:
            size: how many tuples to keep from the start (e.g. ``--limit``); None keeps all.
        """
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
        self.masks = _check_masks(masks, self.modalities, len(self), device=self.labels.device)
        self.vocab_sizes: dict[str, int] = {}
        for modality, x in self.data.items():
            if x.dtype != torch.uint8 and not x.is_floating_point():
                given = (vocab_sizes or {}).get(modality)
                where = f"modality {modality!r}"
                if given is not None:
                    self.vocab_sizes[modality] = check_vocab_size(given, where)
                    continue
                top = int(x.max()) if x.numel() else 1
                if top >= MAX_VOCAB:
                    raise ValueError(f"{where}: token id {top} is beyond the largest vocabulary "
                                     f"supported ({MAX_VOCAB} ids); token ids lie in [0, V)")
                self.vocab_sizes[modality] = max(2, top + 1)
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
            mask = {m: v[index] for m, v in self.masks.items()}
            item = MaskedBatch({m: torch.where(mask[m], x, x.new_zeros(()))
                                for m, x in item.items()}, mask)
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
        prefetch: bool | None = None,
    ) -> Iterator[Batch]:
        """Yield ``(data, labels)`` mini-batches covering the dataset once (one epoch).

        With presence masks ``data`` is a :class:`MaskedBatch` (absent rows zeroed, the masks
        in ``data.mask``).

        Every batch is one vectorised index into the stored tensors; uint8 modalities are moved to
        ``device`` first and converted to float32 ``x / 255`` there (:func:`gather_rows`: pinned
        host memory and asynchronous copies towards CUDA only, blocking copies otherwise). With
        ``shuffle`` the order is ``torch.randperm(N, generator=generator)``, so a seeded
        generator gives a fixed order.

        ``prefetch`` (default off: the tensors are in memory, a gather is cheap) gathers the
        next batch's rows on a background thread (:mod:`pyro_mmvae.data.prefetch`) while this
        one is in use; only host-side gathers are prefetched (a dataset on the device has
        none), and the batches are the same either way.

        Args:
            batch_size: rows per batch, a positive int; the last batch may be smaller.
            shuffle: visit the rows in a random order (default: storage order).
            generator: the ``torch.Generator`` the shuffle is drawn from (CPU); None uses
                torch's global generator. Ignored without ``shuffle``.
            device: where the batches are made (e.g. ``"cuda"``); None: the dataset's
                :attr:`device`.
            drop_last: leave out the last batch when it is smaller than ``batch_size``.
            prefetch: gather the next batch's rows on a background thread (host datasets
                only); None or False: off.

        Yields:
            ``(data, labels)``: ``data`` maps each modality to ``(B, *event_shape)`` on
            ``device`` (float32 in [0, 1] for uint8 images, int64 ``(B, L)`` for token ids,
            other floats as stored), a :class:`MaskedBatch` when the dataset has masks;
            ``labels`` is int64 ``(B,)``.
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
        on_host = self.device.type == "cpu"
        pin = on_host and pinned_for(target)

        def gather(start: int) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, Tensor]:
            """The host part of a batch: its rows where the data are (pinned for CUDA)."""
            index = order[start : start + batch_size]
            data = {m: host_rows(x, index, pin) for m, x in self.data.items()}
            mask = None if self.masks is None else {m: v[index] for m, v in self.masks.items()}
            return data, mask, self.labels[index]

        parts = maybe_prefetch(map(gather, range(0, stop, batch_size)),
                               bool(prefetch) and on_host, target)
        try:
            for data, mask, labels in parts:
                batch = {m: to_float(to_device(x, target)) for m, x in data.items()}
                if mask is not None:
                    mask = {m: to_device(v, target) for m, v in mask.items()}
                    batch = MaskedBatch(_zero_absent(batch, mask), mask)
                yield batch, to_device(labels, target)
        finally:
            close_iterator(parts)

    def subset(self, indices: Sequence[int] | Tensor) -> MultimodalTensorDataset:
        """Return a new dataset holding the tuples at ``indices`` (ints or a boolean mask).

        Args:
            indices: integer row indices (in ``[-N, N)``, repeats allowed, in the order
                wanted) or a bool ``(N,)`` mask of the rows to keep; a list or a tensor.
        """
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
        :func:`missing_masks`. The data tensors are shared, only the masks are new.

        Args:
            ratio: probability in ``[0, 1)`` of dropping each observed (modality, row)
                entry; recorded as :attr:`missing_ratio`.
            seed: seed of the draws (the same seed gives the same masks).
        """
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

        Args:
            device: the target device (``torch.device`` or a string such as ``"cuda"``).
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

        Checks: N > 0; equal N across modalities and labels; labels below
        :data:`MAX_CLASSES`; no NaN/inf in float modalities; float images (event shape
        (C, H, W)) inside [0, 1]. Rows whose mask says a modality is absent may hold anything
        (NaN included): they are not checked, and batches hold zeros there.
        """
        if len(self) == 0:
            raise ValueError(f"dataset {self.name!r} is empty (N = 0).")
        self._check_sizes()
        if int(self.labels.max()) >= MAX_CLASSES:
            row = int((self.labels >= MAX_CLASSES).nonzero()[0, 0])
            raise ValueError(f"dataset {self.name!r}: row {row} has label "
                             f"{int(self.labels[row])}; labels are "
                             f"class indices 0..K-1 with at most {MAX_CLASSES} classes.")
        for modality, x in self.data.items():
            if not x.is_floating_point():
                continue
            present = None if self.masks is None else self.masks[modality]
            bad = ~torch.isfinite(x).reshape(len(x), -1).all(1)
            if present is not None:  # absent rows may hold anything
                bad &= present
            if bool(bad.any()):
                raise ValueError(f"modality {modality!r} contains NaN or infinite values at "
                                 f"row {int(bad.nonzero()[0, 0])}.")
            if x.dim() != 4:
                continue
            bad = ((x < 0) | (x > 1)).reshape(len(x), -1).any(1)
            if present is not None:
                bad &= present
            if bool(bad.any()):
                shown = x if present is None else x[present]
                low, high = float(shown.min()), float(shown.max())
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
