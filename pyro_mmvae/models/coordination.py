r"""Coordination-based multimodal VAEs: JMVAE-KL, TELBO, MVTCAE and CRMVAE.

CRMVAE is from *Mitigating the limitations of multimodal VAEs with coordination-based
approach* (2023; the name is MultiVae's).

These models bring each unimodal posterior :math:`q_m(z|x_m)` close to a joint posterior
:math:`q(z|X)` instead of sub-sampling modality subsets. They share one Pyro program and
differ in the joint posterior and in the objective
(:mod:`pyro_mmvae.infer.coordination`):

==========  =====================================  =============================
model       joint posterior :math:`q(z|X)`          unimodal samples in training
==========  =====================================  =============================
JMVAE-KL    joint encoder :math:`q_\phi(z|X)`        none (KL terms only)
TELBO       joint encoder :math:`q_\phi(z|X)`        :math:`x_m` from :math:`q_m`
MVTCAE      PoE of the unimodal experts             none (KL terms only)
CRMVAE      PoE of the unimodal experts             :math:`x_m` (or all) from :math:`q_m`
==========  =====================================  =============================

**Pyro layout.** The generative model is the library's, :math:`z \sim p(z)`,
:math:`x_m \sim p_\theta(x_m|z)`, with the latent site ``z`` inside a ``strata`` plate
(dim -2) and the ``data`` plate (dim -1):

* stratum 0 draws :math:`z \sim q(z|X_{\text{present}})` and scores every present modality;
* with ``unimodal_targets="own"`` strata 1..M draw :math:`z \sim q_m(z|x_m)` (available
  where m is present) and score :math:`x_m` only; with ``"all"`` they score every present
  modality (cross reconstruction); with ``"none"`` there is only stratum 0.

The guide's distribution (:class:`CoordinatedPosterior`) also carries the unimodal experts
and the presence mask, from which the objective computes its analytic KL terms. With
``decoder_stop_gradient=True`` the decoders of strata 1..M run with detached parameters, so
the unimodal reconstruction terms train the unimodal encoders but not the decoders.

**Joint posterior.** ``joint="poe"``: :math:`q(z|X_S) \propto [p(z)] \prod_{m \in S} q_m`
(prior expert optional, off by default as in MVTCAE/CRMVAE implementations).
``joint="encoder"``: a network on all modalities (:class:`~pyro_mmvae.nets.JointEncoder`)
for rows where every modality is present; conditional generation from a strict subset S uses
the PoE of the present unimodal experts (for one source: :math:`q_m` itself), as JMVAE does
for subsets.

**Incomplete training rows** (a row observes a subset :math:`S \subsetneq \{1..M\}`). Every
objective is then the one of the observed subset: stratum 0 draws
:math:`z \sim q(z|X_S)`, scores :math:`\log p(x_m|z)` for :math:`m \in S` only, and the
terms of absent modalities are zero, so a row contributes
:math:`\mathbb{E}_{q(z|X_S)}[\sum_{m \in S}\lambda_m \log p(x_m|z)] - \beta\,
\mathrm{KL}(q(z|X_S)\|p(z))` (+ the model's terms for :math:`m \in S`). What
:math:`q(z|X_S)` is for a joint-encoder model is the setting ``incomplete_joint``:

* ``"poe"`` (JMVAE): :math:`q(z|X_S) = \prod_{m \in S} q_m(z|x_m)` (normalised), so the
  joint ELBO of an incomplete row trains the unimodal experts and the decoders, as in the
  PoE models; the joint encoder learns on complete rows only.
* ``"encoder"`` (TELBO): :math:`q(z|X_S) = q_\phi(z|X_S)`, the joint encoder with the
  features of the absent modalities zeroed (:class:`~pyro_mmvae.nets.JointEncoder`), one
  network amortised over every subset. TELBO needs this: its first stage trains the joint
  posterior and the decoders with the unimodal encoders *frozen*, and its second stage fits
  the unimodal encoders to those decoders. With the PoE on incomplete rows the first stage
  would fit the decoders to frozen random experts on every incomplete row (31 of 32 rows at
  missing ratio 0.5 with five modalities), and the second stage would fit the unimodal
  encoders to decoders that never saw an informative z: measured at chance (coherence
  0.107 on polymnist-mini, ``--missing-ratio 0.5``, default recipe; 0.216 with the
  encoder). With the encoder, both stages keep their complete-data meaning on every row.
  Measured alternative: the PoE on incomplete rows with the unimodal encoders left
  trainable in the first stage (``--set incomplete_joint=poe --stage 0.75: --stage
  rest:joint_encoder,mods.*.decoder``) reached 0.444, since the unimodal encoders then
  train in all 16 epochs rather than the last 4; but its first stage also trains the
  experts through their unimodal terms, which is no longer TELBO's schedule, so it is a
  recipe rather than the default.

On complete rows both choices give the joint encoder's output, so complete-data training is
the same. Conditional generation (:meth:`CoordinationVAE.posterior`) uses the PoE of the
source experts for a strict subset either way: that is what TELBO's second stage and
JMVAE's KL terms train the unimodal encoders for.

With ``stratify=False`` (importance sampling) the guide draws one z per data point from the
joint posterior of the present modalities and scores it by its density.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn
from torch.func import functional_call

from pyro_mmvae.distributions.coordinated import CoordinatedPosterior
from pyro_mmvae.distributions.experts import component_distribution, product_of_experts
from pyro_mmvae.engine.networks import run_network
from pyro_mmvae.modality import Modality
from pyro_mmvae.models.base import Data, MultimodalVAE, Strata

JOINT_POSTERIORS = ("poe", "encoder")
INCOMPLETE_JOINTS = ("poe", "encoder")
UNIMODAL_TARGETS = ("none", "own", "all")


class CoordinationVAE(MultimodalVAE):
    r"""Shared latent z; joint posterior by PoE or a joint encoder; optional unimodal strata.

    Args:
        modalities: the modalities (their encoders are the unimodal experts
            :math:`q_m(z|x_m)`).
        latent_dim: D, the size of the shared latent z.
        joint: ``"poe"`` (default) or ``"encoder"`` (then ``joint_encoder`` is required);
            keyword only, as are the arguments below.
        joint_encoder: a network ``dict[name, Tensor] -> (loc, raw_scale)`` on all
            modalities, e.g. :class:`~pyro_mmvae.nets.JointEncoder`; its parameters are named
            ``joint_encoder.*`` (useful for training stages that freeze it). ``None``
            (default) with ``joint="poe"``.
        unimodal_targets: ``"none"`` (default), ``"own"`` (stratum m reconstructs
            :math:`x_m`) or ``"all"`` (stratum m reconstructs every present modality).
        decoder_stop_gradient: decode strata 1..M with detached decoder parameters (default
            False; needs ``unimodal_targets`` ``"own"`` or ``"all"``).
        prior_expert: include :math:`p(z)` as an expert of every PoE (default False).
        incomplete_joint: the training posterior of a row with missing modalities, for
            ``joint="encoder"``: ``"poe"`` (default; the product of its present experts) or
            ``"encoder"`` (the joint encoder with absent features zeroed; the network must
            accept ``(data, present)``, see :class:`~pyro_mmvae.nets.JointEncoder`). See the
            module docstring.
        **kwargs: ``beta``, ``kl_warmup_epochs``, ``scale_param`` of
            :class:`~pyro_mmvae.models.MultimodalVAE` (the posterior family is Normal: the
            PoE and the analytic KL terms need it).
    """

    pyro_name = "coordination"

    def __init__(
        self, modalities: Sequence[Modality], latent_dim: int, *,
        joint: str = "poe",
        joint_encoder: nn.Module | None = None,
        unimodal_targets: str = "none",
        decoder_stop_gradient: bool = False,
        prior_expert: bool = False,
        incomplete_joint: str = "poe",
        **kwargs,
    ) -> None:
        kwargs.setdefault("posterior", "normal")
        super().__init__(modalities, latent_dim, **kwargs)
        if self.posterior_family != "normal":
            raise ValueError("coordination models need Normal posteriors (closed-form PoE and "
                             f"KL terms); got posterior={self.posterior_family!r}")
        if joint not in JOINT_POSTERIORS:
            raise ValueError(f"unknown joint posterior {joint!r}; choose one of: "
                             f"{', '.join(JOINT_POSTERIORS)}")
        if (joint == "encoder") != (joint_encoder is not None):
            raise ValueError("joint='encoder' needs a joint_encoder network, and a "
                             "joint_encoder needs joint='encoder'")
        if unimodal_targets not in UNIMODAL_TARGETS:
            raise ValueError(f"unknown unimodal_targets {unimodal_targets!r}; choose one of: "
                             f"{', '.join(UNIMODAL_TARGETS)}")
        if decoder_stop_gradient and unimodal_targets == "none":
            raise ValueError("decoder_stop_gradient acts on unimodal reconstructions; it needs "
                             "unimodal_targets='own' or 'all'")
        if incomplete_joint not in INCOMPLETE_JOINTS:
            raise ValueError(f"unknown incomplete_joint {incomplete_joint!r}; choose one of: "
                             f"{', '.join(INCOMPLETE_JOINTS)}")
        if incomplete_joint == "encoder" and joint != "encoder":
            raise ValueError("incomplete_joint='encoder' needs joint='encoder' (a joint "
                             "encoder to run on incomplete rows)")
        self.joint = joint
        self.incomplete_joint = incomplete_joint
        self.joint_encoder = joint_encoder
        self.unimodal_targets = unimodal_targets
        self.decoder_stop_gradient = bool(decoder_stop_gradient)
        self.prior_expert = bool(prior_expert)

    # ------------------------------------------------------------------ posteriors
    def joint_params(self, data: dict[str, Tensor], present: Tensor,
                     experts: tuple[Tensor, Tensor] | None = None,
                     complete: bool | None = None) -> tuple[Tensor, Tensor]:
        r"""``loc``, ``scale`` ``(B, D)`` of :math:`q(z|X_{\text{present}})`.

        PoE: :math:`T = [1] + \sum_{m \text{ present}} \sigma_m^{-2}`,
        :math:`\mu = T^{-1}\sum_m \sigma_m^{-2}\mu_m`. Joint encoder: its output on rows with
        every modality present, the PoE of the present experts on the other rows.

        ``complete`` is what the caller knows on the host: True (every row observes every
        modality), False (no row does) or None (unknown: both are computed and chosen per
        row on the device, no host sync).

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
            present: bool ``(M, B)``, True where modality m is observed in row b.
            experts: optional ``(loc, scale)`` of the unimodal experts, each ``(M, B, D)``,
                if already computed; ``None``: run the encoders.
            complete: whether every row observes every modality: True, False or ``None``
                (unknown; default).
        """
        use_encoder = self.joint_encoder is not None
        if use_encoder and complete:
            return self._encode_joint(data)
        loc, scale = self.expert_params(data) if experts is None else experts
        p_loc, p_scale = product_of_experts(loc, scale, present, self.prior_expert)
        if not use_encoder or complete is False:
            return p_loc, p_scale
        j_loc, j_scale = self._encode_joint(data)
        rows = present.all(0).unsqueeze(-1)
        return torch.where(rows, j_loc, p_loc), torch.where(rows, j_scale, p_scale)

    def training_joint_params(self, data: dict[str, Tensor], present: Tensor,
                              experts: tuple[Tensor, Tensor] | None = None
                              ) -> tuple[Tensor, Tensor]:
        r"""``loc``, ``scale`` ``(B, D)`` of the joint posterior the objective trains:
        :meth:`joint_params`, except that with ``incomplete_joint="encoder"`` every row,
        complete or not, gets the joint encoder's :math:`q_\phi(z|X_S)` (absent modalities'
        features zeroed: on a complete row the same numbers as without the mask).

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
            present: bool ``(M, B)``, True where modality m is observed in row b.
            experts: optional precomputed ``(loc, scale)`` of the experts, ``(M, B, D)``.
        """
        if self.incomplete_joint != "encoder":
            return self.joint_params(data, present, experts)
        return self._encode_joint(data, present)

    def _encode_joint(self, data: dict[str, Tensor],
                      present: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if present is None:
            loc, raw_scale = run_network(self.joint_encoder, data)
        else:
            rows = {name: present[i] for i, name in enumerate(self.names)}
            loc, raw_scale = run_network(self.joint_encoder, data, rows)
        return loc, self.scale_fn(raw_scale)

    def layout(self, present: Tensor, subsets: Tensor | None = None) -> Strata:
        """Stratum 0 reconstructs every modality; strata 1..M (optional) their targets.
        With ``unimodal_targets="own"`` modality m is decoded on strata 0 and m + 1 only.

        Args:
            present: bool ``(M, B)``, True where modality m is observed in row b.
            subsets: must be ``None`` (coordination models take no modality subsets; any
                other value raises ``ValueError``).
        """
        if subsets is not None:
            raise ValueError("coordination models take no modality subsets")
        num, batch = present.shape
        ones = torch.ones(1, num, dtype=torch.bool, device=present.device)
        if self.unimodal_targets == "none":
            return Strata(available=ones.new_ones(1, batch), members=ones,
                          decode=(None,) * num)
        own = torch.eye(num, dtype=torch.bool, device=present.device)
        members = own if self.unimodal_targets == "own" else ones.expand(num, num)
        available = torch.cat([ones.new_ones(1, batch), present])
        decode = (tuple((0, 1 + i) for i in range(num)) if self.unimodal_targets == "own"
                  else (None,) * num)
        return Strata(available=available, members=torch.cat([ones, members]), decode=decode)

    def latent_posterior(self, data, present, strata, stratify):
        """A :class:`CoordinatedPosterior`: the joint posterior (and the experts as strata).

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout` (unimodal strata when it has more than
                one stratum), or ``None`` (one z per row from the joint posterior).
            stratify: as in :meth:`MultimodalVAE.latent_posterior` (the layout is read from
                ``strata``).
        """
        experts = self.expert_params(data)
        j_loc, j_scale = self.training_joint_params(data, present, experts)
        unimodal = strata is not None and strata.available.size(0) > 1
        return CoordinatedPosterior(j_loc, j_scale, *experts, present,
                                    stratified=strata is not None, unimodal=unimodal)

    def guide(self, data: Data, mask=None, subsets: Tensor | None = None,
              stratify: bool = True, **kwargs) -> None:
        r"""The base guide; the latent site also records ``infer["kl_warmup"]``
        :math:`= \beta_t / \beta` (the warm-up factor, for weights other than β).

        Args:
            data: the batch, as in :meth:`MultimodalVAE.model` (dict modality name ->
                ``(B, ...)`` tensor or ``None``).
            mask: optional dict modality name -> bool ``(B,)`` presence.
            subsets: must be ``None`` (see :meth:`layout`).
            stratify: lay out the strata (default True) or draw one z per data point.
            **kwargs: ``batch_size``, ``sample_missing`` of
                :meth:`MultimodalVAE.guide`.
        """
        factor = self.current_beta / self.beta
        configured = poutine.infer_config(
            super().guide, lambda site: {"kl_warmup": factor} if site["name"] == "z" else {})
        configured(data, mask, subsets, stratify, **kwargs)

    def posterior(self, data: Data, sources: Sequence[str]) -> TorchDistribution:
        """:math:`q(z|X_S)`: the joint posterior of the sources (see :meth:`joint_params`).

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)``; must hold the sources.
            sources: the names of the modalities S to condition on (all of them: the joint
                encoder, if any; else the PoE of their experts).
        """
        sources = self._check_names(sources, "source")
        subset, present = self.prepare({s: data[s] for s in sources})
        loc, scale = self.joint_params(subset, present, complete=len(set(sources)) == len(
            self.names))
        return component_distribution("normal", loc, scale)

    def encode_experts(self, data: Data) -> dict[str, Tensor]:
        """The unimodal experts, and the joint encoder's output when the batch holds every
        modality and the model has one (``joint_loc``, ``joint_scale``).

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)`` or ``None``.
        """
        experts = super().encode_experts(data)
        if self.joint_encoder is not None and all(data.get(n) is not None for n in self.names):
            filled, _ = self.prepare(data)
            experts["joint_loc"], experts["joint_scale"] = self._encode_joint(filled)
        return experts

    def posterior_from_experts(self, experts, sources) -> TorchDistribution:
        """:meth:`posterior` from cached experts: the joint encoder for all modalities (if
        the model has one), else the PoE of the sources' experts.

        Args:
            experts: the cache from :meth:`encode_experts` (``"loc"``, ``"scale"``, and
                ``"joint_loc"``, ``"joint_scale"`` when it holds the joint encoder's output).
            sources: the names of the modalities S to condition on.
        """
        sources = self._check_names(sources, "source")
        if self.joint_encoder is not None and set(sources) == set(self.names):
            if "joint_loc" not in experts:
                raise ValueError("the cached experts lack the joint encoder's output; encode "
                                 "a batch with every modality")
            return component_distribution("normal", experts["joint_loc"],
                                          experts["joint_scale"])
        mask = self.source_mask(sources, experts["loc"])
        loc, scale = product_of_experts(experts["loc"], experts["scale"], mask,
                                        self.prior_expert)
        return component_distribution("normal", loc, scale)

    # ------------------------------------------------------------------ observations
    def observe(self, z: Tensor, data: dict[str, Tensor], reconstruct: Tensor,
                members: Tensor | None = None, skip: Collection[str] = (),
                sample: Collection[str] = (),
                decode: Sequence[Tensor | None] | None = None) -> None:
        """Observe sites as in the base class; with ``decoder_stop_gradient`` strata 1..M
        decode with detached decoder parameters.

        Args:
            z: decoder input, ``(..., S, B, D)`` with strata (stratum 0 the joint one), or
                ``(..., B, D)``.
            data: every modality, filled as :meth:`prepare` returns it.
            reconstruct: bool ``(M, B)`` or ``(M, S, B)``, where each observation is scored.
            members: optional bool ``(S, M)``, the modalities each stratum reconstructs.
            skip: names of modalities that get no site (only without stop-gradient).
            sample: names of modalities drawn instead of observed (only without
                stop-gradient).
            decode: optional per-modality long indices of the strata its decoder runs on.
        """
        if not (self.decoder_stop_gradient and members is not None and members.size(0) > 1):
            super().observe(z, data, reconstruct, members, skip, sample, decode=decode)
            return
        for i, (name, mod) in enumerate(self.mods.items()):
            params = self._decode_detached_strata(
                mod, z, members[:, i], None if decode is None else decode[i],
                known=decode is not None)
            fn = mod.likelihood.distribution(params, len(mod.event_shape))
            with poutine.mask(mask=reconstruct[i]), poutine.scale(scale=mod.weight):
                pyro.sample(f"x_{name}", fn, obs=data[name])

    def _decode_detached_strata(self, mod: Modality, z: Tensor, rows: Tensor,
                                index: Tensor | None = None, known: bool = False) -> Tensor:
        """Decoder output for z ``(..., S, B, D)``: stratum 0 as usual, strata 1.. through the
        decoder with detached parameters, zeros on the strata it does not reconstruct.

        With ``known`` the strata are ``index`` (long on z's device, holding 0; None: every
        stratum), a host-side choice (:attr:`Strata.decode`); otherwise those ``rows`` marks,
        read on the host (a sync on an accelerator).
        """
        dim = z.dim() - 3
        joint = mod.decode(z.narrow(dim, 0, 1))
        rest = z.narrow(dim, 1, z.size(dim) - 1)
        if not known:
            index = rows[1:].cpu().nonzero().squeeze(1).to(z.device)
        elif index is not None:
            index = index[1:] - 1
        chosen = rest if index is None else rest.index_select(dim, index)
        detached = {k: v.detach() for k, v in mod.decoder.named_parameters()}
        flat = run_network(functional_call, mod.decoder, detached,
                           (chosen.reshape(-1, chosen.size(-1)),))
        params = flat.reshape(*chosen.shape[:-1], *mod.param_shape)
        if index is None:
            return torch.cat([joint, params], dim=dim)
        full = params.new_zeros(rest.shape[:-1] + params.shape[chosen.dim() - 1:])
        return torch.cat([joint, full.index_copy(dim, index, params)], dim=dim)
