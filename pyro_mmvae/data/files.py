"""Your own paired data from ``.npy`` files: ``load_dataset("files:DIR")``, ``--dataset files:DIR``.

On-disk format (one folder per split)::

    DIR/train/<name>.npy        one array per modality, first axis = sample (N, ...)
    DIR/train/<name>.mask.npy   optional: bool (N,), True where the row observes <name>
    DIR/train/<name>.vocab      optional: vocabulary size of a token modality (one integer)
    DIR/train/labels.npy        optional: integer class labels (N,) (coherence, probes)
    DIR/test/...                the same modalities

What each modality is follows from its dtype and shape (override with ``--set
modalities.<name>.likelihood=...``, see :mod:`pyro_mmvae.settings`):

* float or uint8 ``(N, C, H, W)`` with C in (1, 3): ``image`` — MLP with centred inputs,
  Laplace likelihood (sigmoid mean);
* other float ``(N, ...)``: ``vector`` — MLP, Normal likelihood;
* integer ``(N, L)``: ``tokens`` — embedding + MLP (:mod:`pyro_mmvae.nets.text`),
  Categorical likelihood.

uint8 arrays are divided by 255; float images must lie in [0, 1]. Token ids lie in
``[0, V)`` with ``V`` from ``<name>.vocab`` or the largest id + 1 (over both splits).

Arrays are opened with ``numpy.load(mmap_mode="r")``: shapes and dtypes come from the
``.npy`` headers, a batch reads its rows from disk and converts only them, and the value
checks (:meth:`FileDataset.validate`) and vocabulary sizes scan each array once in chunks of
at most :data:`SCAN_BYTES`, so a dataset larger than memory trains (masks and labels, one
byte or eight per row, are read into memory). While a batch is in use the next one is read
on a background thread (:mod:`pyro_mmvae.data.prefetch`; ``batches(..., prefetch=False)``
turns it off), with the same batches in the same order. Missing rows of a modality (mask
False) may hold any value (NaN, the common missing marker, included): the checks and the
vocabulary scan skip them, and they are zeroed in the batch and masked out of the model.
Batches carry the masks as :class:`~pyro_mmvae.data.base.MaskedBatch` (``batch.mask``).

Nothing in a data file is ever run: each ``.npy`` header is read and checked first
(:func:`read_npy_header`) and arrays are loaded with ``allow_pickle=False``, so a pickle
named ``x.npy`` or an object array (``dtype=object``, e.g. ragged rows) is refused from its
header, unread. Sizes read from the data are bounded before anything that size is built:
vocabularies by ``MAX_VOCAB``, labels by ``MAX_CLASSES`` (both in
:mod:`pyro_mmvae.data.base`). Every error is one ``ValueError`` line naming the file (and the
row).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyro_mmvae.data.base import (
    MAX_CLASSES,
    MAX_VOCAB,
    HeadMixin,
    MaskedBatch,
    _check_masks,
    check_vocab_size,
    missing_masks,
    pinned_for,
    to_device,
    to_float,
)
from pyro_mmvae.data.prefetch import close_iterator, maybe_prefetch

PREFIX = "files:"
LABELS = "labels"
MASK_SUFFIX = ".mask.npy"
VOCAB_SUFFIX = ".vocab"
#: Bytes per chunk when a whole array is scanned (value checks, vocabulary sizes): a scan
#: holds at most this much of an array in memory (at least one row), whatever its size.
SCAN_BYTES = 64 * 2**20


def modality_kind(dtype: np.dtype, event_shape: Sequence[int]) -> str:
    """``"image"``, ``"vector"`` or ``"tokens"`` for an array of ``dtype`` and event shape.

    Args:
        dtype: the array's NumPy dtype: an integer dtype other than uint8 means token ids.
        event_shape: the shape of one sample (the array's shape without N); ``(C, H, W)``
            with C in (1, 3) means an image.
    """
    shape = tuple(event_shape)
    if np.issubdtype(dtype, np.integer) and dtype != np.uint8:
        return "tokens"
    if len(shape) == 3 and shape[0] in (1, 3):
        return "image"
    return "vector"


def scan_chunks(array: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_row, chunk)`` over the rows of a (memory-mapped) array, each chunk read into
    memory on its own and at most :data:`SCAN_BYTES` large (but at least one row).

    Args:
        array: an array ``(N, ...)``, typically opened with ``numpy.load(mmap_mode="r")``.

    Yields:
        ``(first_row, chunk)``: the index of the chunk's first row and an in-memory array
        ``(rows, ...)`` of consecutive rows.
    """
    row_bytes = max(1, array.itemsize * math.prod(array.shape[1:]))
    rows = max(1, SCAN_BYTES // row_bytes)
    for start in range(0, len(array), rows):
        yield start, np.asarray(array[start:start + rows])


def _first_bad_rows(array: np.ndarray, checks: Mapping[str, Callable[[np.ndarray], np.ndarray]],
                    present: np.ndarray | None = None) -> dict[str, int]:
    """For each ``checks[name](chunk) -> (rows,) bool`` the first row where it is True (names
    without a bad row are left out); one pass over the array for all checks. With
    ``present`` (bool, one per row) only the rows it marks True count."""
    found: dict[str, int] = {}
    for start, chunk in scan_chunks(array):
        keep = None if present is None else present[start:start + len(chunk)]
        for name, bad in checks.items():
            if name in found:
                continue
            hits = bad(chunk)
            rows = np.flatnonzero(hits if keep is None else hits & keep)
            if rows.size:
                found[name] = start + int(rows[0])
        if len(found) == len(checks):
            break
    return found


def _per_row(values: np.ndarray) -> np.ndarray:
    return values.reshape(len(values), -1).any(1)


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (its type when it has none)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return " ".join(str(error).split()) or type(error).__name__


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the ``.npy`` file ``path`` from its header alone.

    Reads the magic string and the header dict (:func:`numpy.lib.format.read_magic`,
    ``read_array_header_1_0``/``2_0``) and nothing else: no data, and never a pickle, so a
    file that is not a ``.npy`` array (a pickle, text, an ``.npz``) or one whose dtype holds
    Python objects is described without running anything from it. Errors (``ValueError``)
    name the file; folders, unreadable files and symlink loops included.

    Args:
        path: the ``.npy`` file to describe.

    Returns:
        ``(shape, dtype)``: the array's shape as a tuple of ints and its NumPy dtype.
    """
    fmt = np.lib.format
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a .npy file")
    try:
        with open(path, "rb") as handle:
            try:
                version = fmt.read_magic(handle)
            except ValueError:
                if os.fstat(handle.fileno()).st_size == 0:
                    raise ValueError(f"{path}: the file is empty (0 bytes), not a .npy "
                                     "array") from None
                raise ValueError(f"{path}: not a .npy file (no NumPy header; a pickle, text "
                                 "or another format?); save arrays with numpy.save") from None
            readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
            if version not in readers:
                raise ValueError(f"{path}: .npy format version {version[0]}.{version[1]} is "
                                 "not supported (only 1.0 and 2.0: plain numeric arrays)")
            try:
                shape, _, dtype = readers[version](handle)
            except ValueError as error:
                raise ValueError(f"{path}: damaged .npy header ({_one_line(error)})") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({_one_line(error)})") from None
    return tuple(shape), dtype


def _open_array(path: Path) -> np.ndarray:
    """``numpy.load(path, mmap_mode="r")`` with errors that name the file; the header is
    checked first (:func:`read_npy_header`), and nothing is ever unpickled."""
    shape, dtype = read_npy_header(path)
    if dtype.hasobject:
        raise ValueError(
            f"{path}: object arrays are not supported (dtype {dtype}: rows of Python objects, "
            "e.g. ragged rows saved with allow_pickle=True, and reading them would unpickle "
            "code); store one numeric array with equal-length rows (pad token sequences to "
            "one length with a padding id)")
    if not shape:
        raise ValueError(f"{path}: needs a first axis of samples, got a scalar")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:  # e.g. truncated: shorter than its header says
        raise ValueError(f"{path}: not a readable .npy array ({_one_line(error)})") from None


def _load_small(path: Path) -> np.ndarray:
    """A small array (a mask, labels) read into memory, checked as :func:`_open_array`."""
    return np.array(_open_array(path))


def _read_text(path: Path) -> str:
    """The text of a small file, errors naming it."""
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a text file")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot be read ({_one_line(error)})") from None


def _resolve_folder(path: str | Path) -> Path:
    """``path`` made absolute; a symlink loop is a ``ValueError`` naming it."""
    given = Path(path).expanduser()
    try:
        return given.resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: symlink loop (Python < 3.13)
        raise ValueError(f"{given}: cannot resolve the folder ({_one_line(error)}); a "
                         "symlink loop?") from None


class FileDataset(HeadMixin):
    """A split of a ``files:`` dataset (see the module docstring); memory-mapped.

    Args:
        folder: the split folder (``DIR/train`` or ``DIR/test``).
        name: the dataset name (``"files:DIR"``), recorded in run folders.
        vocab_sizes: vocabulary sizes of token modalities (default: ``<name>.vocab`` files,
            else the largest id + 1 of this split).
    """

    missing_ratio: float = 0.0

    def __init__(self, folder: str | Path, name: str | None = None,
                 vocab_sizes: Mapping[str, int] | None = None) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder; a files dataset needs "
                                    "DIR/train and DIR/test with one .npy file per modality")
        self.folder = folder
        self.name = name or f"{PREFIX}{folder.parent}"
        paths = sorted(p for p in folder.glob("*.npy")
                       if not p.name.endswith(MASK_SUFFIX) and p.stem != LABELS)
        if not paths:
            raise ValueError(f"{folder}: no modality arrays (<name>.npy) found")
        self.paths = {p.stem: p for p in paths}
        self.arrays = {name: _open_array(p) for name, p in self.paths.items()}
        sizes = {name: len(a) for name, a in self.arrays.items()}
        n = max(sizes.values())
        for m, size in sizes.items():
            if size != n:
                longest = max(sizes, key=sizes.get)
                raise ValueError(
                    f"{self.paths[m]} has {size} rows but {self.paths[longest]} has {n}: "
                    f"row {size} onwards has no {m!r}; every modality needs one row per "
                    "sample (mark a missing row with <name>.mask.npy)")
        self.kinds: dict[str, str] = {}
        for m, array in self.arrays.items():
            dtype = array.dtype
            if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)) \
                    or dtype == np.bool_:
                raise ValueError(
                    f"{self.paths[m]}: dtype {dtype} is not supported; use float (vectors, "
                    "images in [0, 1]), uint8 (images 0..255) or integer token ids (N, L)")
            kind = modality_kind(dtype, array.shape[1:])
            if kind == "tokens" and array.ndim != 2:
                raise ValueError(f"{self.paths[m]}: integer arrays are token sequences and "
                                 f"must be (N, L), got shape {array.shape}; store other "
                                 "integer data as float")
            self.kinds[m] = kind
        self.masks = self._load_masks(n)
        self._labels = self._load_labels(n)
        self.has_labels = self._labels is not None
        self.rows: np.ndarray | None = None  # None: every row, in order
        #: smallest and largest token id of the token arrays scanned for their vocabulary
        self._id_range: dict[str, tuple[int, int]] = {}
        self.vocab_sizes = self._vocabularies(vocab_sizes or {})

    # ----------------------------------------------------------------------------- loading
    def _load_masks(self, n: int) -> dict[str, Tensor] | None:
        masks = {}
        for m in self.arrays:
            path = self.folder / f"{m}{MASK_SUFFIX}"
            if not os.path.lexists(path):
                continue
            mask = _load_small(path)
            if mask.dtype != np.bool_ or mask.shape != (n,):
                raise ValueError(f"{path}: a mask must be bool of shape ({n},), got "
                                 f"{mask.dtype} of shape {mask.shape}")
            masks[m] = torch.from_numpy(mask.copy())
        orphans = [p for p in self.folder.glob(f"*{MASK_SUFFIX}")
                   if p.name[: -len(MASK_SUFFIX)] not in self.arrays]
        if orphans:
            raise ValueError(f"{orphans[0]}: a mask for a modality that has no array")
        if not masks:
            return None
        try:
            return _check_masks(masks, tuple(self.arrays), n, where=f" of {self.folder}")
        except ValueError as error:
            files = ", ".join(str(self.folder / f"{m}{MASK_SUFFIX}") for m in masks)
            raise ValueError(f"{error} (masks: {files})") from None

    def _load_labels(self, n: int) -> np.ndarray | None:
        path = self.folder / f"{LABELS}.npy"
        if not os.path.lexists(path):
            return None
        labels = _load_small(path)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: labels must be integers of shape ({n},), got "
                             f"{labels.dtype} of shape {labels.shape}")
        bad = np.flatnonzero(labels < 0)
        if bad.size:
            raise ValueError(f"{path}: row {int(bad[0])} has a negative label {labels[bad[0]]}")
        bad = np.flatnonzero(labels >= MAX_CLASSES)
        if bad.size:
            raise ValueError(f"{path}: row {int(bad[0])} has label {labels[bad[0]]}; labels are "
                             f"class indices 0..K-1 with at most {MAX_CLASSES} classes")
        return labels.astype(np.int64)

    def _present(self, m: str) -> np.ndarray | None:
        """Bool ``(rows in the file,)``: the file rows that observe ``m`` (None: all)."""
        return None if self.masks is None else self.masks[m].numpy()

    def _vocabularies(self, given: Mapping[str, int]) -> dict[str, int]:
        """Vocabulary sizes of the token modalities: given, from ``<name>.vocab``, or the
        largest id + 1 of the rows that observe the modality (one chunked scan, whose
        smallest and largest ids :meth:`validate` then reuses). Each is at most
        ``MAX_VOCAB`` (:mod:`pyro_mmvae.data.base`), checked before anything that size
        exists."""
        sizes = {}
        for m, kind in self.kinds.items():
            if kind != "tokens":
                continue
            path = self.folder / f"{m}{VOCAB_SUFFIX}"
            if m in given:
                sizes[m] = check_vocab_size(given[m], f"modality {m!r}")
            elif os.path.lexists(path):
                text = _read_text(path)
                try:
                    size = int(text.strip())
                except ValueError:
                    raise ValueError(f"{path}: must hold one integer, the vocabulary size "
                                     "of the token modality") from None
                sizes[m] = check_vocab_size(size, str(path))
            else:
                sizes[m] = self._scan_vocabulary(m)
        return sizes

    def _scan_vocabulary(self, m: str) -> int:
        """The largest token id + 1 over the rows that observe ``m``; an id of
        ``MAX_VOCAB`` (:mod:`pyro_mmvae.data.base`) or more is an error naming its row."""
        low, high = 0, 1
        present = self._present(m)
        for start, chunk in scan_chunks(self.arrays[m]):
            if present is not None:
                keep = present[start:start + len(chunk)]
                chunk, rows = chunk[keep], np.flatnonzero(keep) + start
            else:
                rows = np.arange(start, start + len(chunk))
            if not chunk.size:
                continue
            top = int(chunk.max())
            if top >= MAX_VOCAB:
                row = int(rows[np.flatnonzero((chunk >= MAX_VOCAB).any(1))[0]])
                raise ValueError(
                    f"{self.paths[m]}: row {row} has token id {top}, beyond the largest "
                    f"vocabulary supported ({MAX_VOCAB} ids); token ids must lie in [0, V) "
                    f"with V in {m}{VOCAB_SUFFIX} (or the largest id + 1)")
            low, high = min(low, int(chunk.min())), max(high, top)
        self._id_range[m] = (low, high)
        return max(2, high + 1)

    # ----------------------------------------------------------------------------- structure
    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names (the array files' stems, sorted)."""
        return tuple(self.arrays)

    @property
    def event_shapes(self) -> dict[str, torch.Size]:
        """Shape of one sample of each modality."""
        return {m: torch.Size(a.shape[1:]) for m, a in self.arrays.items()}

    @property
    def device(self) -> torch.device:
        """The data stay on disk; batches are made on the CPU (then moved)."""
        return torch.device("cpu")

    @property
    def labels(self) -> Tensor:
        """Labels (N,) int64 (zeros when the folder has no ``labels.npy``)."""
        n = len(self)
        if self._labels is None:
            return torch.zeros(n, dtype=torch.int64)
        labels = self._labels if self.rows is None else self._labels[self.rows]
        return torch.from_numpy(np.ascontiguousarray(labels))

    def _index(self) -> np.ndarray:
        return np.arange(len(self)) if self.rows is None else self.rows

    def _row_masks(self, rows: np.ndarray) -> dict[str, Tensor] | None:
        if self.masks is None:
            return None
        index = torch.from_numpy(rows)
        return {m: v[index] for m, v in self.masks.items()}

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.rows is None else len(self.rows)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{m}: {tuple(s)} {self.kinds[m]}"
                           for m, s in self.event_shapes.items())
        return f"FileDataset(name={self.name!r}, N={len(self)}, {shapes})"

    def _read(self, rows: np.ndarray, pin: bool = False) -> dict[str, Tensor]:
        """The modalities at file rows ``rows`` as tensors in their stored dtype (uint8 images
        and integer token ids as they are, converted by :func:`~pyro_mmvae.data.base.to_float`
        on the batch's device; other floats as float32), zero in the rows a modality is absent
        from (whatever the file holds there); with ``pin`` in pinned host memory."""
        order = np.argsort(rows, kind="stable")  # read the memmap in file order, then undo
        sorted_rows = rows[order]
        inverse = torch.from_numpy(np.argsort(order, kind="stable"))
        masks = self._row_masks(sorted_rows)
        out = {}
        for m, array in self.arrays.items():
            x = torch.from_numpy(np.ascontiguousarray(array[sorted_rows]))  # a copy: ours
            if x.is_floating_point() and x.dtype != torch.float32:
                x = x.float()
            if masks is not None and not bool(masks[m].all()):
                x[~masks[m]] = 0
            if pin:  # the undoing gather writes straight into page-locked memory
                out[m] = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
                torch.index_select(x, 0, inverse, out=out[m])
            else:
                out[m] = x[inverse]
        return out

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], int]:
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} tuples.")
        rows = self._index()[[int(index)]]
        data = {m: to_float(x[0]) for m, x in self._read(rows).items()}
        mask = self._row_masks(rows)
        label = int(self.labels[int(index)])
        if mask is not None:
            data = MaskedBatch(data, {m: v[0] for m, v in mask.items()})
        return data, label

    # ----------------------------------------------------------------------------- iteration
    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None,
                device: torch.device | str | None = None,
                drop_last: bool = False, prefetch: bool | None = None
                ) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """``(data, labels)`` batches, read from the memory-mapped files (as
        ``MultimodalTensorDataset.batches``); with masks ``data`` is a
        :class:`~pyro_mmvae.data.base.MaskedBatch`.

        Rows cross to ``device`` in their stored dtype (uint8 images: a quarter of the bytes
        of float32) and are converted there; towards CUDA they are gathered into pinned host
        memory and copied asynchronously, every other copy is blocking
        (:func:`~pyro_mmvae.data.base.to_device`).

        ``prefetch`` (default on; ``False`` to read each batch when it is asked for) reads
        the next batch from the files on a background thread while this one is in use
        (:class:`~pyro_mmvae.data.prefetch.Prefetcher`): the file read and the gather into
        pinned memory overlap the training step; the device copy and conversion stay on the
        caller's thread. The order is drawn before the thread starts, from ``generator`` (or
        torch's global generator) as without prefetch, and the batches are the same.

        Args:
            batch_size: rows per batch, a positive int; the last batch may be smaller.
            shuffle: visit the rows in a random order (default: file order).
            generator: the ``torch.Generator`` the shuffle is drawn from (CPU); None uses
                torch's global generator. Ignored without ``shuffle``.
            device: where the batches are made (e.g. ``"cuda"``); None: the CPU.
            drop_last: leave out the last batch when it is smaller than ``batch_size``.
            prefetch: read the next batch on a background thread; None (default) or True:
                on, False: off.

        Yields:
            ``(data, labels)``: ``data`` maps each modality to ``(B, *event_shape)`` on
            ``device`` (float32 in [0, 1] for uint8 images, other floats as float32, int64
            ``(B, L)`` for token ids; zeros in absent rows), a
            :class:`~pyro_mmvae.data.base.MaskedBatch` when the folder has masks; ``labels``
            is int64 ``(B,)`` (zeros without ``labels.npy``).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.numpy()
        index, labels = self._index(), self.labels
        target = torch.device(device) if device is not None else self.device
        stop = n - n % batch_size if drop_last else n
        pin = pinned_for(target)

        def read(start: int) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, Tensor]:
            """The host part of a batch: its rows read from the files (absent rows: zeros),
            their masks and labels."""
            positions = order[start:start + batch_size]
            rows = index[positions]
            return (self._read(rows, pin=pin), self._row_masks(rows),
                    labels[torch.from_numpy(positions)])

        parts = maybe_prefetch(map(read, range(0, stop, batch_size)),
                               prefetch is None or bool(prefetch), target)
        try:
            for data, mask, label in parts:
                batch = {m: to_float(to_device(x, target)) for m, x in data.items()}
                if mask is not None:
                    batch = MaskedBatch(batch,
                                        {m: to_device(v, target) for m, v in mask.items()})
                yield batch, to_device(label, target)
        finally:
            close_iterator(parts)

    def _view(self, rows: np.ndarray, masks: dict[str, Tensor] | None) -> FileDataset:
        """A dataset over file rows ``rows`` sharing the memory maps."""
        out = object.__new__(FileDataset)
        out.__dict__.update(self.__dict__)
        out.rows = rows
        out.masks = masks
        return out

    def subset(self, indices: Sequence[int] | Tensor) -> FileDataset:
        """The tuples at ``indices`` (ints or a boolean mask), still memory-mapped.

        Args:
            indices: integer row indices (in ``[-N, N)``, repeats allowed, in the order
                wanted) or a bool ``(N,)`` mask of the rows to keep; a list or a tensor.
        """
        index = torch.as_tensor(indices)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise ValueError(f"a boolean mask must have shape ({len(self)},), got "
                                 f"{tuple(index.shape)}.")
            index = index.nonzero().squeeze(1)
        if index.is_floating_point():
            raise ValueError("subset indices must be integers or a boolean mask.")
        index = index.reshape(-1).long()
        n = len(self)
        if index.numel() and (int(index.min()) < -n or int(index.max()) >= n):
            raise IndexError(f"subset indices out of range for a dataset of {n} tuples.")
        positions = index.remainder(n).numpy() if n else index.numpy()
        return self._view(self._index()[positions], self.masks)

    def to(self, device: torch.device | str) -> FileDataset:
        """The data stay on disk: ``self`` (batches move to the device given to them).

        Args:
            device: ignored: a files dataset is read on the CPU; pass the device to
                :meth:`batches` instead.
        """
        return self

    def presence(self) -> Tensor:
        """Bool ``(M, N)``: which modality each row observes."""
        if self.masks is None:
            return torch.ones(len(self.modalities), len(self), dtype=torch.bool)
        index = torch.from_numpy(self._index())
        return torch.stack([self.masks[m][index] for m in self.modalities])

    def with_missing(self, ratio: float, seed: int = 0) -> FileDataset:
        """A copy dropping each observed modality of each row with probability ``ratio``
        (seeded; a row always keeps one), see :func:`~pyro_mmvae.data.base.missing_masks`.

        Args:
            ratio: probability in ``[0, 1)`` of dropping each observed (modality, row)
                entry; recorded as ``missing_ratio``.
            seed: seed of the draws (the same seed gives the same masks).
        """
        kept = missing_masks(self.presence(), ratio, seed)
        full = len(next(iter(self.arrays.values())))
        masks = {}
        for i, m in enumerate(self.modalities):
            mask = torch.zeros(full, dtype=torch.bool)
            mask[torch.from_numpy(self._index())] = kept[i]
            masks[m] = mask
        out = self._view(self.rows, masks)
        out.missing_ratio = float(ratio)
        return out

    def complete(self) -> FileDataset:
        """The rows that observe every modality."""
        return self if self.masks is None else self.subset(self.presence().all(0))

    # ----------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Scan every array once, in chunks of at most :data:`SCAN_BYTES` (shapes and dtypes
        were checked from the ``.npy`` headers on opening): finite floats, float images in
        [0, 1], token ids in ``[0, V)``; errors name the file and the first bad row. Rows whose
        mask says the modality is absent may hold anything (NaN, the common missing marker,
        included): they are not checked, and batches hold zeros there."""
        if len(self) == 0:
            raise ValueError(f"{self.folder}: the dataset is empty (N = 0)")
        for m, array in self.arrays.items():
            path, kind = self.paths[m], self.kinds[m]
            checks: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
            if np.issubdtype(array.dtype, np.floating):
                checks["finite"] = lambda c: _per_row(~np.isfinite(c))
                if kind == "image":
                    checks["range"] = lambda c: _per_row((c < 0) | (c > 1))
            vocab = self.vocab_sizes.get(m)
            low, high = self._id_range.get(m, (-1, -1))
            if kind == "tokens" and not 0 <= low <= high < vocab:  # else known to be in range
                checks["ids"] = lambda c, v=vocab: _per_row((c < 0) | (c >= v))
            if not checks:
                continue  # uint8 images: every value is a pixel
            bad = _first_bad_rows(array, checks, self._present(m))
            if "finite" in bad:
                raise ValueError(f"{path}: row {bad['finite']} holds NaN or infinite values")
            if "range" in bad:
                raise ValueError(f"{path}: row {bad['range']} has values outside [0, 1]; "
                                 "float images must lie in [0, 1] (or store uint8)")
            if "ids" in bad:
                raise ValueError(f"{path}: row {bad['ids']} has token ids outside [0, {vocab}) "
                                 f"(vocabulary size {vocab}; set it in {m}{VOCAB_SUFFIX})")


def files_dataset_name(name: str) -> str:
    """``"files:DIR"`` with DIR made absolute (what run folders record).

    Args:
        name: a dataset name ``"files:DIR"`` with a non-empty DIR (``~`` is expanded);
            anything else is a ``ValueError``.
    """
    if not name.startswith(PREFIX) or not name[len(PREFIX):]:
        raise ValueError(f"expected files:DIR, got {name!r}")
    return f"{PREFIX}{_resolve_folder(name[len(PREFIX):])}"


def load_files(path: str | Path, split: str = "train") -> FileDataset:
    """Split ``split`` of the files dataset in folder ``path`` (``path/train``, ``path/test``).

    Both splits must have the same modalities; token vocabularies are the larger of the two
    splits' (or the ``.vocab`` files), so train and test build the same model.

    Args:
        path: the dataset folder DIR, holding ``train/`` and ``test/`` (``~`` is expanded).
        split: ``"train"`` or ``"test"``: the subfolder to load.

    Returns:
        A memory-mapped :class:`FileDataset` named ``"files:<absolute DIR>"``.
    """
    root = _resolve_folder(path)
    name = f"{PREFIX}{root}"
    splits = {s: root / s for s in ("train", "test")}
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder for dataset {name!r}")
    if not splits[split].is_dir():
        raise FileNotFoundError(f"{splits[split]}: missing; a files dataset needs the folders "
                                f"{root}/train and {root}/test")
    dataset = FileDataset(splits[split], name)
    other_split = "test" if split == "train" else "train"
    if splits[other_split].is_dir():
        other = FileDataset(splits[other_split], name)
        if other.event_shapes != dataset.event_shapes or other.kinds != dataset.kinds:
            raise ValueError(f"{splits['train']} and {splits['test']} hold different "
                             f"modalities: {dict(other.event_shapes)} vs "
                             f"{dict(dataset.event_shapes)}")
        vocab = {m: max(v, other.vocab_sizes[m]) for m, v in dataset.vocab_sizes.items()}
        dataset.vocab_sizes = vocab
    return dataset


def write_files(folder: str | Path, data: Mapping[str, np.ndarray],
                labels: np.ndarray | None = None,
                masks: Mapping[str, np.ndarray] | None = None,
                vocab_sizes: Mapping[str, int] | None = None) -> Path:
    """Write one split in the files format: ``folder/<name>.npy`` per modality, and the
    optional ``labels.npy``, ``<name>.mask.npy`` and ``<name>.vocab``.

    Args:
        folder: the split folder (``DIR/train`` or ``DIR/test``), created if missing;
            existing files of the same names are overwritten.
        data: modality name -> array ``(N, ...)`` (uint8 or float ``(N, C, H, W)`` images,
            float vectors, integer token ids ``(N, L)``), saved as given.
        labels: optional integer class labels ``(N,)``, saved as int64.
        masks: optional modality name -> bool ``(N,)`` presence (True: observed).
        vocab_sizes: optional modality name -> vocabulary size of a token modality.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for m, x in data.items():
        np.save(folder / f"{m}.npy", np.asarray(x))
    for m, x in (masks or {}).items():
        np.save(folder / f"{m}{MASK_SUFFIX}", np.asarray(x, dtype=bool))
    for m, v in (vocab_sizes or {}).items():
        (folder / f"{m}{VOCAB_SUFFIX}").write_text(f"{int(v)}\n")
    if labels is not None:
        np.save(folder / f"{LABELS}.npy", np.asarray(labels, dtype=np.int64))
    return folder
