r"""How the networks run: mixed precision (autocast) and ``torch.compile``.

Mixed precision in this library is applied to the **networks only**: encoders, decoders and
joint encoders run under :func:`torch.autocast` in ``bfloat16`` or ``float16``, their outputs
are cast back to ``float32``, and everything probabilistic — the distributions, their
log-densities, the Pyro traces and the objective — stays in ``float32``. This is the usual
recipe (the log-likelihood of a 3x28x28 image sums 2352 terms; in bf16 its rounding error
alone would be about 2352 * 2^-8 nats).

.. code-block:: python

    with network_precision("bf16", "cpu"):
        loss = elbo.differentiable_loss(vae.model, vae.guide, batch)
    loss.backward()

``float16`` needs loss scaling (:func:`grad_scaler`); ``bfloat16`` does not.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from pyro_mmvae.engine.device import cpu_flags

#: Precisions accepted by :func:`network_precision` (``--precision`` on the command line).
PRECISIONS = ("32", "bf16", "16")
_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16}

#: How :meth:`pyro_mmvae.modality.Modality.decode` batches latents with leading
#: particle/stratum dimensions:
#: ``"stacked"`` runs the decoder once on all of them, ``"split"`` once per slice of
#: ``B`` latents (the same FLOPs; which is faster depends on the device, see
#: ``benchmarks/throughput.py``).
DECODER_BATCHING = ("stacked", "split")

#: Memory formats of the convolution weights (and so of the activations): ``"contiguous"``
#: (NCHW, torch's default) or ``"channels_last"`` (NHWC, oneDNN's and cuDNN's preferred
#: layout). The arithmetic is the same; the speed differs by device (see
#: :func:`choose_memory_format`).
MEMORY_FORMATS = ("contiguous", "channels_last")

#: ``(device_type, dtype)`` of the active autocast scope of the networks, or None.
_AUTOCAST: contextvars.ContextVar[tuple[str, torch.dtype] | None] = contextvars.ContextVar(
    "pyro_mmvae_network_autocast", default=None
)


def check_precision(precision: str) -> str:
    """Return ``precision`` as one of :data:`PRECISIONS` (``"fp32"``/``"32"`` etc. accepted).

    Args:
        precision: a spelling of 32-bit, bfloat16 or float16 (``"32"``, ``"fp32"``,
            ``"float32"``, ``"bf16"``, ``"bfloat16"``, ``"16"``, ``"fp16"``; any case).
            ``"auto"`` is not accepted here (see :func:`resolve_precision`).

    Raises:
        ValueError: for any other value.
    """
    text = str(precision).lower().removeprefix("fp").removeprefix("float")
    text = {"bfloat16": "bf16", "b16": "bf16"}.get(text, text)
    if text not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return text


@contextlib.contextmanager
def network_precision(precision: str, device_type: str | torch.device = "cpu") -> Iterator[None]:
    """Run every network called through :func:`run_network` in ``precision`` inside the block.

    Args:
        precision: ``"32"`` (no autocast), ``"bf16"`` or ``"16"`` (any spelling
            :func:`check_precision` accepts).
        device_type: ``"cpu"`` or ``"cuda"`` (a :class:`torch.device` is accepted); the
            device type given to :func:`torch.autocast`.
    """
    precision = check_precision(precision)
    device_type = torch.device(device_type).type
    state = None if precision == "32" else (device_type, _DTYPES[precision])
    token = _AUTOCAST.set(state)
    try:
        yield
    finally:
        _AUTOCAST.reset(token)


def _to_float32(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_to_float32(v) for v in value)
    if isinstance(value, list):
        return [_to_float32(v) for v in value]
    return value


def run_network(network: Callable[..., Any], *args: Any) -> Any:
    """``network(*args)``, under autocast when a :func:`network_precision` scope is active.

    Floating outputs come back as ``float32`` so that the distributions built from them are
    evaluated in full precision.

    Args:
        network: the callable to run (an encoder, decoder or joint encoder); ``*args`` are
            its inputs.

    Returns:
        ``network(*args)``, with floating tensors (also inside tuples and lists) as float32
        under an active scope.
    """
    state = _AUTOCAST.get()
    if state is None:
        return network(*args)
    device_type, dtype = state
    with torch.autocast(device_type=device_type, dtype=dtype):
        out = network(*args)
    return _to_float32(out)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A :class:`torch.amp.GradScaler` for float16 training, None otherwise.

    Args:
        precision: the resolved network precision (one of :data:`PRECISIONS`).
        device: the training device (the scaler is made for its type).
    """
    if check_precision(precision) != "16":
        return None
    return torch.amp.GradScaler(device.type)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` has native bfloat16 matrix units (CUDA: compute capability >= 8 of
    that very GPU, Ampere and later; CPU: AMX-BF16 or AVX512-BF16, as reported by oneDNN).

    Args:
        device: the device to ask about (``cuda`` without an index: the current GPU).
    """
    if device.type == "cuda":
        # native units only: torch.cuda.is_bf16_supported() also says True where bf16 is
        # emulated (V100, T4: compute capability 7.x), and asks about the current device
        if not torch.cuda.is_available():
            return False
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, _ = torch.cuda.get_device_capability(index)
        return major >= 8
    mkldnn = getattr(torch.backends, "mkldnn", None)
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if check is not None:
        try:
            return bool(check())
        except (RuntimeError, AttributeError):
            return False
    return bool(mkldnn and mkldnn.is_available() and not cpu_flags().isdisjoint(
        {"avx512_bf16", "amx_bf16"}))


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` as one of :data:`PRECISIONS`, with ``"auto"`` resolved for ``device``.

    ``"auto"`` (the training default) is ``"bf16"`` where the device has bfloat16 matrix units
    (:func:`bf16_supported`) and ``"32"`` elsewhere: on the default ``polymnist-mini`` runs of
    MMVAE and MMVAE+ bf16 reached the fp32 coherence within 0.03
    (``benchmarks/results/precision_mini_cpu.md``), and where it is emulated it is only slower.

    Args:
        precision: ``"auto"`` or a precision :func:`check_precision` accepts.
        device: the training device (a :class:`torch.device` or its name).

    Returns:
        One of :data:`PRECISIONS`.
    """
    if str(precision).lower() == "auto":
        return "bf16" if bf16_supported(torch.device(device)) else "32"
    return check_precision(precision)


def warn_if_emulated(precision: str, device: torch.device | str) -> None:
    """Warn when ``precision`` is bf16 on a device without bfloat16 matrix units.

    There autocast still works (oneDNN converts to and from fp32 around every kernel) but is
    much slower than fp32: a PolyMNIST ResNet step ran 12-15x slower in bf16 than in fp32 on
    an AVX2 CPU (``benchmarks/results/throughput_cpu.md``).

    Args:
        precision: the resolved network precision (one of :data:`PRECISIONS`).
        device: the training device (a :class:`torch.device` or its name).
    """
    device = torch.device(device)
    if check_precision(precision) == "bf16" and not bf16_supported(device):
        warnings.warn(
            f"--precision bf16 on this {device.type} device, which has no bfloat16 matrix "
            "units (CPU: AMX-BF16 or AVX512-BF16; CUDA: compute capability >= 8): the "
            "networks run emulated bf16, typically several times slower than fp32. "
            "Use --precision 32 here.", UserWarning, stacklevel=2)



def network_modules(vae: nn.Module) -> list[nn.Module]:
    """The encoders, decoders and joint encoder of ``vae`` (the modules worth compiling).

    Args:
        vae: a model of the zoo: its ``mods`` (name -> modality with ``encoder`` and
            ``decoder``) and its optional ``joint_encoder`` are searched.
    """
    return [network for _, network in _named_networks(vae)]


def compile_networks(vae: nn.Module, **options: Any) -> nn.Module:
    """``torch.compile`` every network of ``vae`` in place (:meth:`torch.nn.Module.compile`).

    Parameter names and ``state_dict`` keys do not change, so checkpoints of compiled and
    uncompiled runs are interchangeable. ``options`` go to :func:`torch.compile` (the default
    here is ``dynamic=True``: the decoders see a varying number of latents per call).

    Args:
        vae: the model whose :func:`network_modules` are compiled.

    Returns:
        ``vae`` itself.
    """
    options.setdefault("dynamic", True)
    for network in network_modules(vae):
        network.compile(**options)
    return vae


def choose_decoder_batching(decoder: nn.Module, device: torch.device | str = "cpu") -> str:
    """``split`` for convolutional decoders on the CPU, ``stacked`` otherwise.

    Measured on a 2-core AVX2 CPU (one thread): the PolyMNIST ResNet decoder on 5·B latents
    in one call is 1.11x (B = 32) to 1.31x (B = 128) slower than 5 calls on B latents, while
    an MLP decoder is 1.5x faster in one call (28.5 vs 43.5 ms for 5 x 64 latents); on a GPU
    one large call keeps the device busy.

    Args:
        decoder: the decoder network of a modality.
        device: the device it runs on.

    Returns:
        ``"split"`` or ``"stacked"`` (see :data:`DECODER_BATCHING`).
    """
    convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in decoder.modules())
    return "split" if torch.device(device).type == "cpu" and convolutional else "stacked"


def choose_memory_format(network: nn.Module, device: torch.device | str = "cpu") -> str:
    """``channels_last`` for convolutional networks on the CPU and on CUDA, ``contiguous``
    otherwise.

    Measured on a 2-core AVX2 CPU (AMD EPYC, one thread, fp32 forward + backward, CPU time,
    ``benchmarks/results/memory_format_cpu.md``): the PolyMNIST ResNet encoder takes 0.89-0.91x
    and the decoder 0.88-0.94x the time in channels_last at B = 32 and 128. On CUDA, cuDNN's
    tensor-core convolutions (bf16/fp16, and TF32 on Ampere and later) work in NHWC and
    transpose NCHW inputs around each call, so channels_last is NVIDIA's recommended layout
    (``benchmarks/gpu/check.sh`` measures it as the ``bf16+channels_last`` variant).
    Networks without 2-d convolutions are unaffected.

    Args:
        network: an encoder, decoder or joint encoder.
        device: the device it runs on.

    Returns:
        ``"channels_last"`` or ``"contiguous"`` (see :data:`MEMORY_FORMATS`).
    """
    convolutional = any(isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
                        for m in network.modules())
    supported = torch.device(device).type in ("cpu", "cuda")
    return "channels_last" if supported and convolutional else "contiguous"


def set_memory_format(vae: nn.Module, mode: str, device: torch.device | str = "cpu"
                      ) -> dict[str, str]:
    """Put every network of ``vae`` (:func:`network_modules`) in memory format ``mode``:
    one of :data:`MEMORY_FORMATS` or ``"auto"`` (:func:`choose_memory_format` per network).
    Only 4-d parameters (convolution weights) change layout; values, names and
    ``state_dict`` keys do not, so checkpoints load across formats. Returns the format
    chosen for each kind of network (``"encoder"``, ``"decoder"``, ``"joint_encoder"``).

    Args:
        vae: the model, changed in place.
        mode: ``"auto"``, ``"contiguous"`` or ``"channels_last"`` (``--memory-format``).
        device: the training device, which ``"auto"`` decides for.

    Returns:
        ``{kind: format}``; ``"mixed"`` where networks of one kind got different formats.

    Raises:
        ValueError: for an unknown ``mode``.
    """
    if mode not in (*MEMORY_FORMATS, "auto"):
        raise ValueError(f"unknown memory format {mode!r}; choose 'auto', "
                         f"{', '.join(repr(m) for m in MEMORY_FORMATS)}")
    chosen: dict[str, str] = {}
    for kind, network in _named_networks(vae):
        fmt = choose_memory_format(network, device) if mode == "auto" else mode
        network.to(memory_format=torch.channels_last if fmt == "channels_last"
                   else torch.contiguous_format)
        if chosen.get(kind, fmt) != fmt:
            fmt = "mixed"
        chosen[kind] = fmt
    return chosen


def _named_networks(vae: nn.Module) -> list[tuple[str, nn.Module]]:
    found = []
    for mod in getattr(vae, "mods", {}).values():
        found += [("encoder", mod.encoder), ("decoder", mod.decoder)]
    joint = getattr(vae, "joint_encoder", None)
    if joint is not None:
        found.append(("joint_encoder", joint))
    return found


def set_decoder_batching(vae: nn.Module, mode: str,
                         device: torch.device | str = "cpu") -> None:
    """Set how every modality of ``vae`` batches its decoder calls: ``"stacked"`` (one call
    on all particles and strata), ``"split"`` (one call per B latents) or ``"auto"``
    (:func:`choose_decoder_batching` for each decoder on ``device``).

    Args:
        vae: the model; each modality of its ``mods`` gets a ``decoder_batching``.
        mode: ``"auto"``, ``"stacked"`` or ``"split"`` (``--decoder-batching``).
        device: the training device, which ``"auto"`` decides for.

    Raises:
        ValueError: for an unknown ``mode``.
    """
    if mode not in (*DECODER_BATCHING, "auto"):
        raise ValueError(f"unknown decoder batching {mode!r}; choose 'auto', 'stacked' or "
                         "'split'")
    for mod in getattr(vae, "mods", {}).values():
        mod.decoder_batching = (choose_decoder_batching(mod.decoder, device) if mode == "auto"
                                else mode)
