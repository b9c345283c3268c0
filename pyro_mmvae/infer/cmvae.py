r"""The CMVAE objective (Palumbo et al. 2024): MMVAE+'s, with the cluster c summed out exactly.

The model of :class:`~pyro_mmvae.models.CMVAE` draws :math:`c \sim \mathrm{Cat}(\pi)` and
:math:`z \sim p(z|c)`; the guide has no site c. Replaying the model under Pyro's
:class:`~pyro.poutine.enum_messenger.EnumMessenger` gives site ``c`` all C values at once in a
dim left of the particles (``first_available_dim = -(max_plate_nesting + 2)``), so the sites
that depend on c (``c`` and ``z``) have log-densities ``(C, K, S, B)``. They are summed and
contracted over the enumerated dim *before* their scale (:math:`\beta`) and mask apply:

.. math:: \log w_r = \dots + \beta\Big[\log \sum_{c=1}^{C} \pi_c\, p(z \mid c)
          + \log p(w_r) - \log q_\Phi(z|X) - \log q_r(w_r|x_r)\Big],

the MMVAE+ log-weight (:class:`~pyro_mmvae.infer.MMVAEPlusELBO`) with the mixture prior
:math:`\log p(z)` in place of a fixed one. This equals the ELBO with the optimal cluster
posterior :math:`q(c|z,X) = p(c|z)`,
:math:`\mathbb{E}_{p(c|z)}[\log p(c) + \log p(z|c) - \log p(c|z)] = \log p(z)`, so no
Gumbel-softmax or score-function estimator is needed and the gradient is exact in c.
The estimators (``"elbo"``, ``"iwae"``, ``"dreg"``) are the base class's, applied to these
log-weights; model sites without an enumerated dim are scored as in
:class:`~pyro_mmvae.infer.MultimodalELBO`.
"""

from __future__ import annotations

from numbers import Number

from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import is_validation_enabled
from torch import Tensor

from pyro_mmvae.infer.base import WeightedTraces, scored_sites
from pyro_mmvae.infer.mmvae_plus import MMVAEPlusELBO

__all__ = ["CMVAEELBO", "contract_enumerated"]


def contract_enumerated(sites: list[dict], full_dims: int) -> Tensor:
    r"""Sum out the enumerated dims of a group of model sites: their scale and mask applied
    to :math:`\log \sum_{\text{enum}} \exp \sum_{\text{sites}} \log p`.

    Args:
        sites: the model sites whose log-densities carry enumerated dims (left of the
            ``full_dims`` plate dims); they must share one numeric scale.
        full_dims: the number of plate dims (particles, strata, data: 3).

    Returns:
        The contracted log-density ``(K, S, B)`` (masked entries 0).

    Raises:
        NotImplementedError: when the sites' scales differ (the scale of a sum over an
            enumerated variable is then undefined).
    """
    total, mask, scale = 0.0, None, sites[0]["scale"]
    for site in sites:
        if not (isinstance(site["scale"], Number) and isinstance(scale, Number)
                and site["scale"] == scale):
            raise NotImplementedError(f"enumerated site {site['name']!r} has a scale other "
                                      "than the rest of its group; scale them alike")
        total = total + site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        if isinstance(site["mask"], Tensor):
            mask = site["mask"] if mask is None else mask & site["mask"]
        elif site["mask"] is False:
            mask = False
    enum_dims = tuple(range(total.dim() - full_dims))
    contracted = total.logsumexp(dim=enum_dims) if enum_dims else total
    return scale_and_mask(contracted, scale, mask)


class CMVAEELBO(MMVAEPlusELBO):
    r"""MMVAE+'s stratified objective with the model's enumerated sites summed out.

    Args:
        num_particles: K, importance samples per data point and stratum (default 1).
        estimator: ``"elbo"``, ``"iwae"`` or ``"dreg"`` (default ``"elbo"``; see
            :class:`~pyro_mmvae.infer.MultimodalELBO`).
        max_plate_nesting: plates besides the particle plate (default 2: strata and data);
            the enumerated cluster dim goes left of the particles, at
            ``-(max_plate_nesting + 2)``.
    """

    def get_traces(self, model, guide, args, kwargs) -> tuple[Trace, Trace]:
        """The guide trace and the model trace replayed against it, the model's
        ``infer={"enumerate": "parallel"}`` sites enumerated (all values at once).

        Args:
            model: the Pyro model (e.g. :class:`~pyro_mmvae.models.CMVAE`'s ``model``).
            guide: the Pyro guide; run once inside the ``particles`` plate of size K.
            args: positional arguments of both programs, as a tuple (``data``, ``mask``).
            kwargs: keyword arguments of both programs, as a dict.

        Returns:
            ``(model_trace, guide_trace)``.
        """
        guide_trace = poutine.trace(self._in_particle_plate(guide)).get_trace(*args, **kwargs)
        replayed = poutine.replay(self._in_particle_plate(model), trace=guide_trace)
        enumerated = poutine.enum(replayed, first_available_dim=-(self.max_plate_nesting + 2))
        model_trace = poutine.trace(enumerated).get_trace(*args, **kwargs)
        if is_validation_enabled():
            self._check_traces(model_trace, guide_trace)
        return model_trace, guide_trace

    def weigh(self, model_trace: Trace, guide_trace: Trace,
              detach_guide: bool = False) -> WeightedTraces:
        """Log-weights ``(K, S, B)`` as :meth:`MultimodalELBO.weigh`, the model sites with
        enumerated dims contracted by :func:`contract_enumerated`.

        Args:
            model_trace: the model trace from :meth:`get_traces`.
            guide_trace: the guide trace from :meth:`get_traces`.
            detach_guide: score the guide with its parameters detached (DReG); default False.

        Returns:
            A :class:`~pyro_mmvae.infer.base.WeightedTraces`.
        """
        full = self.max_plate_nesting + 1
        group = [s for s in scored_sites(model_trace)
                 if s["infer"].get("_enumerate_dim") is not None
                 or _reads_enumerated(s, full)]
        if not group:
            return super().weigh(model_trace, guide_trace, detach_guide)
        rest = model_trace.copy()
        for site in group:
            rest.remove_node(site["name"])
        weighted = super().weigh(rest, guide_trace, detach_guide)
        weighted.log_weights = weighted.log_weights + contract_enumerated(group, full)
        weighted.model_trace = model_trace
        return weighted


def _reads_enumerated(site: dict, full_dims: int) -> bool:
    """Whether a site's distribution has batch dims left of the plates (it reads an
    enumerated value)."""
    return len(site["fn"].batch_shape) > full_dims
