"""One modality of a multimodal VAE: its data shape, likelihood and networks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn

from pyro_mmvae.engine.networks import run_network
from pyro_mmvae.likelihoods import Likelihood, get_likelihood


class Modality(nn.Module):
    r"""A modality ``x_m``: name, event shape, likelihood :math:`p(x_m|z)`, encoder, decoder.

    Args:
        name: identifier used for the data dict key and the Pyro site ``x_<name>``; must be a
            Python identifier.
        event_shape: shape of one data point, e.g. ``(3, 28, 28)`` for an RGB image or
            ``(T,)`` for a token sequence.
        likelihood: a :class:`~pyro_mmvae.likelihoods.Likelihood` or its name (``"laplace"``,
            ``"normal"``, ``"bernoulli"``; ``"categorical"`` needs an instance, for its
            number of classes).
        encoder: network ``x (B, *event_shape) -> (loc, raw_scale)``, each ``(B, D)``
            (more outputs, e.g. private latents, are passed through).
        decoder: network ``z (N, D_in) -> (N, *param_shape)``; :meth:`decode` flattens any
            leading particle/expert dimensions into N and restores them afterwards.
        weight: :math:`\lambda_m > 0`, the weight of this modality's log-likelihood
            (default 1.0, applied with ``poutine.scale`` on the site ``x_<name>``).
    """

    def __init__(
        self,
        name: str,
        event_shape: Sequence[int],
        likelihood: str | Likelihood,
        encoder: nn.Module,
        decoder: nn.Module,
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not name.isidentifier():
            raise ValueError(f"modality name {name!r} must be a Python identifier "
                             "(letters, digits, underscores)")
        if not weight > 0:
            raise ValueError(f"modality {name!r}: weight must be positive, got {weight}")
        self.name = name
        self.event_shape = torch.Size(event_shape)
        self.likelihood = get_likelihood(likelihood)
        self.encoder = encoder
        self.decoder = decoder
        self.weight = float(weight)
        self.decoder_batching = "stacked"

    @property
    def param_shape(self) -> torch.Size:
        """Shape of the decoder output per data point, as the likelihood needs it."""
        return self.likelihood.param_shape(self.event_shape)

    @property
    def is_image(self) -> bool:
        """Event shape ``(C, H, W)`` with 1 or 3 channels: pixel data, floats in [0, 1]."""
        return len(self.event_shape) == 3 and self.event_shape[0] in (1, 3)

    def check(self, x: Tensor, dtype: torch.dtype | None = None) -> None:
        """Raise ``ValueError`` naming the modality if ``x`` has the wrong shape, a dtype other
        than ``dtype`` (the model's; see :meth:`Likelihood.check_dtype`), values outside the
        likelihood's support, or, for images, looks like 0..255 pixel data (non-negative with
        values above 1; images are floats in [0, 1]).

        Shape and dtype checks are free; the value checks read the whole tensor.

        Args:
            x: a batch of this modality, shape ``(B, *event_shape)``.
            dtype: the model's floating dtype, e.g. ``torch.float32``; ``None`` skips the
                dtype check.
        """
        if not isinstance(x, Tensor):
            raise ValueError(f"modality {self.name!r}: expected a tensor, got {type(x).__name__}")
        n = len(self.event_shape)
        if x.dim() != n + 1 or x.shape[1:] != self.event_shape:
            raise ValueError(f"modality {self.name!r}: expected shape (batch, "
                             f"{', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}")
        if dtype is not None:
            self.likelihood.check_dtype(x, self.name, dtype)
        self.likelihood.check_support(x, self.name)
        if self.is_image and x.is_floating_point() and x.numel():
            low, high = float(x.min()), float(x.max())
            if low >= 0 and high > 1:
                raise ValueError(
                    f"modality {self.name!r}: image values lie in [{low:.4g}, {high:.4g}] "
                    "(0..255 pixel data?), but images must be floats in [0, 1]: divide them "
                    "by 255")

    def encode(self, x: Tensor) -> tuple[Tensor, ...]:
        """Run the encoder on ``x``, shape ``(B, *event_shape)``, in the active network
        precision (:func:`~pyro_mmvae.engine.networks.network_precision`).

        Args:
            x: a batch of this modality, shape ``(B, *event_shape)``.

        Returns:
            The encoder's outputs: ``(loc, raw_scale)``, each ``(B, D)``, then any extra
            outputs (e.g. MMVAE+'s private ``(loc_w, raw_scale_w)``).
        """
        return run_network(self.encoder, x)

    def decode(self, z: Tensor) -> Tensor:
        """Decoder parameters for latents of any leading shape, ``(*lead, D) -> (*lead, *P)``.

        Args:
            z: decoder input, shape ``(*lead, D_in)``, e.g. ``(K, S, B, D)`` for K particles,
                S strata and B data points; the leading dims are flattened for one decoder
                call.

        Returns:
            ``(*lead, *param_shape)``, what :attr:`likelihood` reads.
        """
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.size(-1))
        if self.decoder_batching == "split" and z.dim() > 2 and flat.size(0) > z.size(-2):
            out = torch.cat([run_network(self.decoder, rows) for rows in flat.split(z.size(-2))])
        else:
            out = run_network(self.decoder, flat)
        return out.reshape(*lead, *self.param_shape)

    def distribution(self, z: Tensor) -> TorchDistribution:
        """:math:`p(x_m | z)` with batch shape ``z.shape[:-1]``.

        Args:
            z: decoder input, shape ``(*lead, D_in)``.

        Returns:
            The likelihood's distribution, batch shape ``z.shape[:-1]`` and event shape
            :attr:`event_shape`.
        """
        return self.likelihood.distribution(self.decode(z), len(self.event_shape))

    def mean(self, z: Tensor) -> Tensor:
        """The decoder mean :math:`E[x_m | z]` (the argmax for a categorical likelihood).

        Args:
            z: decoder input, shape ``(*lead, D_in)``.

        Returns:
            ``(*lead, *event_shape)``.
        """
        return self.likelihood.mean(self.decode(z))

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, event_shape={tuple(self.event_shape)}, "
                f"likelihood={self.likelihood!r}, weight={self.weight}")
