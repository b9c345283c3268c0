"""The guide distribution of the coordination family (JMVAE-KL, TELBO, MVTCAE, CRMVAE).

Its latent draws come from the joint posterior and, as strata, from the unimodal experts;
the objectives of :mod:`pyro_mmvae.infer.coordination` read its parameters to compute the
KL terms in closed form.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_mmvae.distributions.experts import ComponentDraws, component_distribution


class CoordinatedPosterior(ComponentDraws):
    r"""Normal distributions over z, one per stratum, that remember the experts they came from.

    ``loc``/``scale`` have shape ``(S, B, D)`` (stratified: stratum 0 the joint posterior,
    strata 1..M the unimodal experts when ``unimodal=True``) or ``(B, D)`` (unstratified: the
    joint posterior only). ``rsample``/``log_prob`` are those of
    :math:`\mathcal{N}(\text{loc}, \text{scale})` with event shape ``(D,)``; each stratum is
    scored by its own density.

    Args:
        joint_loc: :math:`\mu` of :math:`q(z|X)`, ``(B, D)``.
        joint_scale: :math:`\sigma` of :math:`q(z|X)`, ``(B, D)``, positive.
        expert_loc: :math:`\mu_m` of every :math:`q_m(z|x_m)`, ``(M, B, D)``.
        expert_scale: :math:`\sigma_m`, ``(M, B, D)``, positive.
        present: bool ``(M, B)``, True where modality m is observed.
        stratified: lay out strata (stratum dim first: batch ``(S, B)``) if True (default),
            else one distribution per row (batch ``(B,)``).
        unimodal: add strata 1..M drawn from the experts (only with ``stratified``; default
            False: the joint stratum alone, ``S = 1``).
        validate_args: Pyro/torch argument validation; ``None`` follows the global setting.
    """

    def __init__(
        self,
        joint_loc: Tensor,
        joint_scale: Tensor,
        expert_loc: Tensor,
        expert_scale: Tensor,
        present: Tensor,
        stratified: bool = True,
        unimodal: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        if expert_loc.shape[1:] != joint_loc.shape or present.shape != expert_loc.shape[:2]:
            raise ValueError(f"inconsistent shapes: joint {tuple(joint_loc.shape)}, experts "
                             f"{tuple(expert_loc.shape)}, present {tuple(present.shape)}")
        if unimodal and not stratified:
            raise ValueError("unimodal strata need the stratified layout")
        self.joint_loc, self.joint_scale = joint_loc, joint_scale
        self.expert_loc, self.expert_scale = expert_loc, expert_scale
        self.present = present.bool()
        self.stratified, self.unimodal = stratified, unimodal
        if not stratified:
            loc, scale = joint_loc, joint_scale
        elif unimodal:
            loc = torch.cat([joint_loc.unsqueeze(0), expert_loc])
            scale = torch.cat([joint_scale.unsqueeze(0), expert_scale])
        else:
            loc, scale = joint_loc.unsqueeze(0), joint_scale.unsqueeze(0)
        self.loc, self.scale = loc, scale
        self.components = component_distribution("normal", loc, scale)
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    @property
    def num_modalities(self) -> int:
        """The number of modalities M."""
        return self.expert_loc.size(0)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.components.log_prob(value)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return self.scale.pow(2)
