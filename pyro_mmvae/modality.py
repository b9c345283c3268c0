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

    :param name: identifier used for the data dict key and the Pyro site ``x_<name>``.
    :param event_shape: shape of one data point, e.g. ``(3, 28, 28)``.
    :param likelihood: a :class:`~pyro_mmvae.likelihoods.Likelihood` or its name.
    :param encoder: network ``x (B, *event_shape) -> (loc, raw_scale)``, each ``(B, D)``
        (more outputs, e.g. private latents, are passed through).
    :param decoder: network ``z (N, D_in) -> (N, *param_shape)``; :meth:`decode` flattens any
        leading particle/expert dimensions into N and restores them afterwards.
    :param weight: :math:`\lambda_m`, the weight of this modality's log-likelihood.
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

    def check(self, x: Tensor) -> None:
        """Raise ``ValueError`` if ``x`` has the wrong shape or values outside the support."""
        if not isinstance(x, Tensor):
            raise ValueError(f"modality {self.name!r}: expected a tensor, got {type(x).__name__}")
        n = len(self.event_shape)
        if x.dim() != n + 1 or x.shape[1:] != self.event_shape:
            raise ValueError(f"modality {self.name!r}: expected shape (batch, "
                             f"{', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}")
        self.likelihood.check_support(x, self.name)

    def encode(self, x: Tensor) -> tuple[Tensor, ...]:
        """Run the encoder on ``x``, shape ``(B, *event_shape)``, in the active network
        precision (:func:`~pyro_mmvae.engine.networks.network_precision`)."""
        return run_network(self.encoder, x)

    def decode(self, z: Tensor) -> Tensor:
        """Decoder parameters for latents of any leading shape, ``(*lead, D) -> (*lead, *P)``."""
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.size(-1))
        if self.decoder_batching == "split" and z.dim() > 2 and flat.size(0) > z.size(-2):
            out = torch.cat([run_network(self.decoder, rows) for rows in flat.split(z.size(-2))])
        else:
            out = run_network(self.decoder, flat)
        return out.reshape(*lead, *self.param_shape)

    def distribution(self, z: Tensor) -> TorchDistribution:
        """:math:`p(x_m | z)` with batch shape ``z.shape[:-1]``."""
        return self.likelihood.distribution(self.decode(z), len(self.event_shape))

    def mean(self, z: Tensor) -> Tensor:
        """The decoder mean :math:`E[x_m | z]`."""
        return self.likelihood.mean(self.decode(z))

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, event_shape={tuple(self.event_shape)}, "
                f"likelihood={self.likelihood!r}, weight={self.weight}")
