r"""The base class of every multimodal VAE: a Pyro model and the pieces guides share.

The generative model is the same for the whole zoo,

.. math:: z \sim p(z), \qquad x_m \sim p_\theta(x_m \mid z) \quad (m = 1..M),

written as a Pyro program with one data plate and one observe site ``x_<name>`` per
modality; a modality that is absent for some rows is masked out with ``poutine.mask``.
Subclasses differ in the guide (how :math:`q(z \mid X_S)` aggregates the unimodal experts) and
in the objective (a :class:`pyro.infer.ELBO` subclass from :mod:`pyro_mmvae.infer`).

Shapes: the guide may draw z with extra leading batch dimensions — vectorised particles
(dim -3) and mixture strata (dim -2) — and decoders are run once on all of them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistribution
from pyro.poutine.util import is_validation_enabled
from torch import Tensor, nn

from pyro_mmvae.distributions.experts import (
    FAMILIES,
    component_distribution,
    constant_table,
    is_accelerator,
)
from pyro_mmvae.distributions.scales import get_scale_fn
from pyro_mmvae.likelihoods import CategoricalLikelihood
from pyro_mmvae.modality import Modality

Data = Mapping[str, Tensor | None]
Mask = Mapping[str, Tensor] | None

DATA_DIM = -1
STRATA_DIM = -2
#: The point of :math:`q(z|X_S)` conditional generation decodes: its mean (the default) or
#: one draw :math:`z \sim q(z|X_S)` per data point (the papers' protocol: MultiVae's coherence,
#: and the MMVAE+ authors' cross-generation, decode a sample).
POSTERIOR_POINTS = ("mean", "sample")


def check_posterior_point(posterior: str) -> str:
    """``posterior`` if it is one of :data:`POSTERIOR_POINTS`, else a ValueError.

    Args:
        posterior: ``"mean"`` or ``"sample"``.
    """
    if posterior not in POSTERIOR_POINTS:
        raise ValueError(f"unknown posterior point {posterior!r}; choose one of: "
                         f"{', '.join(POSTERIOR_POINTS)}")
    return posterior


def posterior_point(q: TorchDistribution, posterior: str = "mean") -> Tensor:
    """The mean of ``q`` (``posterior="mean"``) or one draw from it (``"sample"``).

    Args:
        q: the posterior :math:`q(z|X_S)`, batch shape ``(B,)``, event shape ``(D,)``.
        posterior: ``"mean"`` (default) or ``"sample"`` (no gradient).

    Returns:
        A latent point per data point, ``(B, D)``.
    """
    return q.mean if check_posterior_point(posterior) == "mean" else q.sample()


def _is_categorical(mod: Modality) -> bool:
    return isinstance(mod.likelihood, CategoricalLikelihood)


def _check_rows_covered(present: Tensor, sync: bool) -> None:
    """Raise ``ValueError`` if a row of ``present`` ``(M, B)`` has no present modality.

    A host check off an accelerator or with ``sync`` (Pyro validation on); else
    ``torch._assert_async`` (the error then surfaces at the accelerator's next
    synchronisation), see :func:`~pyro_mmvae.distributions.experts.is_accelerator`.
    """
    covered = present.any(0)
    if not is_accelerator(present.device) or sync:
        if not bool(covered.all()):
            empty = (~covered).nonzero().squeeze(1).tolist()
            shown = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
            raise ValueError(
                f"every row needs at least one present modality, but {len(empty)} row(s) of "
                f"the batch have none (rows {shown}); drop those rows or unmask a modality")
    else:
        torch._assert_async(covered.all(), "every row needs at least one present modality "
                            "(a mask leaves a row with none); drop those rows")


@dataclass
class Strata:
    """A stratification of the latent site: S strata per data point.

    Args:
        available: bool ``(S, B)``: stratum s exists for data point b.
        members: optional bool ``(S, M)``: the modalities stratum s *reconstructs*
            (MVAE's subset ELBOs); ``None`` reconstructs every present modality in every
            stratum (MMVAE, MoPoE).
        decode: optional, per modality, the strata its decoder runs on (a tuple of
            stratum indices, a superset of those ``members`` marks; ``None``: every stratum).
            Known on the host, so selecting the strata needs no read of ``members`` from the
            device. Without it, a layout with ``members`` reads them (a host sync per
            modality).
    """

    available: Tensor
    members: Tensor | None = None
    decode: tuple[tuple[int, ...] | None, ...] | None = None

    def decode_indices(self, device: torch.device) -> list[Tensor | None] | None:
        """:attr:`decode` as long index tensors on ``device`` (built once per device).

        Args:
            device: the device of the latents (and of the returned indices).

        Returns:
            One entry per modality (``None``: decode every stratum), or ``None`` without
            :attr:`decode`.
        """
        if self.decode is None:
            return None
        return [None if rows is None else constant_table(rows, torch.long, device)
                for rows in self.decode]

    def reconstruct_mask(self, present: Tensor) -> Tensor:
        """Bool ``(M, S, B)`` or ``(M, B)``: where each modality's observation is scored.

        Args:
            present: bool ``(M, B)``, True where modality m is observed in row b.

        Returns:
            ``present`` itself without :attr:`members`, else
            ``members[s, m] & present[m, b]`` laid out ``(M, S, B)``.
        """
        if self.members is None:
            return present
        return self.members.t().unsqueeze(-1) & present.unsqueeze(1)


_INSTANCES: dict[str, itertools.count] = {}


def _has_data(data: Data) -> bool:
    """Whether ``data`` holds at least one modality tensor."""
    return isinstance(data, Mapping) and any(v is not None for v in data.values()) or (
        data is not None and not isinstance(data, Mapping))


def _instance_name(base: str) -> str:
    """``base`` for the first model of a class name, then ``base_1``, ``base_2``, ..."""
    number = next(_INSTANCES.setdefault(base, itertools.count()))
    return base if number == 0 else f"{base}_{number}"


class MultimodalVAE(nn.Module):
    r"""Shared latent :math:`z \in \mathbb{R}^D`, one :class:`Modality` per data source.

    Args:
        modalities: the modalities, in a fixed order (names unique; at least one). The
            order is that of the ``M`` dimension of every ``(M, ...)`` tensor.
        latent_dim: D, the size of the shared latent z.
        posterior: family of the unimodal experts and of the prior, ``"normal"`` (default)
            or ``"laplace"``.
        scale_param: how an encoder's raw output becomes a scale (``"softplus"``, the
            default, or ``"softmax"``, see :mod:`pyro_mmvae.distributions.scales`).
        beta: :math:`\beta > 0`, the weight of the prior-ratio (KL) terms (default 1.0);
            applied with ``poutine.scale`` on the latent site in both model and guide.
        kl_warmup_epochs: anneal beta linearly from ``beta / n`` to ``beta`` over the first
            n epochs (default 0: no warm-up); see :meth:`start_epoch`.
    """

    pyro_name = "mmvae"

    def __init__(
        self,
        modalities: Sequence[Modality],
        latent_dim: int,
        posterior: str = "normal",
        scale_param: str = "softplus",
        beta: float = 1.0,
        kl_warmup_epochs: int = 0,
    ) -> None:
        super().__init__()
        if not modalities:
            raise ValueError("a multimodal VAE needs at least one modality")
        names = [m.name for m in modalities]
        if len(set(names)) != len(names):
            raise ValueError(f"modality names must be unique, got {names}")
        if posterior not in FAMILIES:
            raise ValueError(f"unknown posterior family {posterior!r}; choose one of: "
                             f"{', '.join(FAMILIES)}")
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.mods = nn.ModuleDict({m.name: m for m in modalities})
        self.pyro_name = _instance_name(type(self).pyro_name)
        self.pyro_register = True
        self.latent_dim = int(latent_dim)
        self.posterior_family = posterior
        self.scale_param = scale_param
        self.scale_fn = get_scale_fn(scale_param)
        self.beta = float(beta)
        self.current_beta = float(beta)
        self.kl_warmup_epochs = int(kl_warmup_epochs)
        self.register_buffer("_prior_loc", torch.zeros(self.latent_dim))
        self.register_buffer("_prior_scale", torch.ones(self.latent_dim))

    # ----------------------------------------------------------------- input handling
    @property
    def names(self) -> tuple[str, ...]:
        """The modality names, in order."""
        return tuple(self.mods.keys())

    @property
    def modalities(self) -> dict[str, Modality]:
        """The modalities by name."""
        return dict(self.mods.items())

    def prepare(self, data: Data, mask: Mask = None) -> tuple[dict[str, Tensor], Tensor]:
        """Check a batch and return ``(data, present)``.

        ``present`` is a bool tensor ``(M, B)``; absent entries of ``data`` are replaced by
        zeros so that encoders stay finite (their strata and observations are masked out).
        Without ``mask``, the ``mask`` attribute of ``data`` (a dataset's
        :class:`~pyro_mmvae.data.base.MaskedBatch`) is used if it has one.

        Always checked (free, or one cheap reduction): names, shapes, batch sizes, an empty
        batch, dtypes (the model's float dtype; uint8 pixels are refused, see
        :meth:`~pyro_mmvae.likelihoods.Likelihood.check_dtype`), and, when a ``mask`` is
        given, that every row keeps at least one present modality: a row with none has no
        posterior and its gradient turns every parameter into NaN. On the CPU that is a
        plain check; on an accelerator, with Pyro validation off, ``torch._assert_async``
        (no host sync per step). Value checks that read the whole batch (NaN, support, 0..255
        images) run while Pyro validation is on (the trainer validates its first batch).

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)``, or ``None`` for an
                absent modality (a modality left out is absent too); at least one given.
            mask: optional dict modality name -> bool ``(B,)``, True where that modality is
                observed in row b (partially observed batches); ``None``: every given
                modality is present in every row.

        Returns:
            ``(data, present)``: every modality filled (zeros where absent) and the bool
            presence ``(M, B)``, in the model's modality order.
        """
        if not isinstance(data, Mapping):
            raise ValueError("data must be a dict mapping modality names to tensors")
        if mask is None:  # a dataset's MaskedBatch carries its presence masks
            mask = getattr(data, "mask", None)
            if mask is not None:
                mask = {k: v for k, v in mask.items() if data.get(k) is not None}
        unknown = set(data) - set(self.names)
        if mask is not None:
            unknown |= set(mask) - set(self.names)
        if unknown:
            raise ValueError(f"unknown modality name(s) {sorted(unknown)}; this model has "
                             f"{list(self.names)}")
        given = {k: v for k, v in data.items() if v is not None}
        if not given:
            raise ValueError("the batch has no modality at all")
        for name, x in given.items():
            if not isinstance(x, Tensor):
                self.mods[name].check(x)  # raises: not a tensor
        sizes = {k: v.shape[0] if v.dim() else 0 for k, v in given.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"modalities have different batch sizes: {sizes}")
        batch_size = next(iter(sizes.values()))
        ref = next(iter(given.values()))
        dtype = self._prior_loc.dtype
        validate = is_validation_enabled()
        filled, present = {}, []
        for name, mod in self.mods.items():
            x = given.get(name)
            row_mask = None if mask is None else mask.get(name)
            if x is None:
                shape = (batch_size, *mod.event_shape)
                fill = ref.dtype if ref.is_floating_point() or _is_categorical(mod) else dtype
                filled[name] = torch.zeros(shape, dtype=fill, device=ref.device)
                present.append(torch.zeros(batch_size, dtype=torch.bool, device=ref.device))
                continue
            if x.shape[1:] != mod.event_shape or x.dim() != len(mod.event_shape) + 1:
                mod.check(x)  # raises with a clear message
            if batch_size == 0:
                raise ValueError(f"the batch is empty: modality {name!r} has 0 rows; pass at "
                                 "least one data point")
            mod.likelihood.check_dtype(x, name, dtype)
            if row_mask is None:
                row_mask = torch.ones(batch_size, dtype=torch.bool, device=x.device)
            elif row_mask.shape != (batch_size,):
                raise ValueError(f"mask for {name!r} must have shape ({batch_size},), got "
                                 f"{tuple(row_mask.shape)}")
            row_mask = row_mask.bool()
            x = torch.where(row_mask.view(-1, *[1] * len(mod.event_shape)), x, x.new_zeros(()))
            if validate:
                mod.check(x)
            filled[name] = x
            present.append(row_mask)
        present_t = torch.stack(present)
        if mask is not None:  # without a mask every given modality is present in every row
            _check_rows_covered(present_t, sync=validate)
        return filled, present_t

    # ------------------------------------------------------------------ distributions
    def prior(self) -> TorchDistribution:
        """:math:`p(z)`: standard Normal or Laplace(0, 1), event shape ``(D,)``."""
        return component_distribution(self.posterior_family, self._prior_loc, self._prior_scale)

    def expert_params(self, data: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Run every unimodal encoder: ``loc`` and ``scale`` of shape ``(M, B, D)``.

        Args:
            data: every modality, filled as :meth:`prepare` returns it (name ->
                ``(B, *event_shape)``).
        """
        locs, scales = [], []
        for name, mod in self.mods.items():
            loc, raw_scale = mod.encode(data[name])[:2]
            locs.append(loc)
            scales.append(self.scale_fn(raw_scale))
        return torch.stack(locs), torch.stack(scales)

    # ------------------------------------------------------------------ Pyro programs
    def layout(self, present: Tensor, subsets: Tensor | None = None) -> Strata | None:
        """How the latent site is stratified (``None``: one z per data point).

        Args:
            present: bool ``(M, B)``, True where modality m is observed in row b.
            subsets: optional bool ``(k, M)``, extra modality subsets to add as strata (for
                objectives that sub-sample subsets, e.g. MVAE); ignored here.
        """
        return None

    @contextlib.contextmanager
    def stratified(self, strata: Strata | None):
        """The ``strata`` plate (dim -2) masked to the available strata, if any.

        Args:
            strata: the layout from :meth:`layout`; ``None`` opens no plate.
        """
        if strata is None:
            yield
            return
        size = strata.available.size(0)
        with pyro.plate("strata", size, dim=STRATA_DIM), poutine.mask(mask=strata.available):
            yield

    def start_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based): linear KL warm-up of beta.

        Sets ``current_beta`` to ``beta * min(1, (epoch + 1) / kl_warmup_epochs)``.

        Args:
            epoch: the epoch about to start, counted from 0.
        """
        if self.kl_warmup_epochs > 0:
            self.current_beta = self.beta * min(1.0, (epoch + 1) / self.kl_warmup_epochs)
        else:
            self.current_beta = self.beta

    def model(self, data: Data = None, mask: Mask = None, subsets: Tensor | None = None,
              stratify: bool = True, *, batch_size: int | None = None,
              sample_missing: bool = False) -> None:
        r"""Generative model: latents from :meth:`sample_latents` (:math:`z \sim p(z)`) and
        ``x_<name>`` observed in the data plate.

        ``subsets`` (bool ``(k, M)``) are extra strata for objectives that sub-sample modality
        subsets (MVAE); the model and the guide must receive the same ones. With
        ``stratify=False`` there is no strata plate: one z per data point, as importance
        sampling of :math:`\log p(X)` needs.

        Generation the Pyro way (:class:`pyro.infer.Predictive`): with no data and
        ``batch_size=n`` every ``x_<name>`` is *sampled* from :math:`p(x_m|z)`,
        :math:`z \sim p(z)`; with ``sample_missing=True`` (implies ``stratify=False``) the
        modalities absent from ``data`` are sampled instead of left out, so
        ``Predictive(vae.model, guide=vae.guide, num_samples=k)(partial, sample_missing=True)``
        draws them given :math:`z \sim q(z|X_{\text{present}})` — cross-modal generation.

        Args:
            data: the batch: dict modality name -> tensor ``(B, *event_shape)`` (float in
                the model's dtype; token ids for a categorical modality), ``None`` or left
                out for a modality absent from the whole batch; a dataset's
                :class:`~pyro_mmvae.data.base.MaskedBatch` also carries its masks. ``None``
                or ``{}``: no data, sample everything (needs ``batch_size``).
            mask: optional dict modality name -> bool ``(B,)``, True where the modality is
                observed in row b; ``None``: the batch's own masks, or all present.
            subsets: optional bool ``(k, M)``: extra strata, one per modality subset
                (MVAE's sub-sampled subset ELBOs); must match the guide's.
            stratify: lay out the model's strata (default True); False: one z per data
                point (importance sampling).
            batch_size: the number of rows to sample when there is no data (keyword only).
            sample_missing: sample the modalities absent from ``data`` instead of leaving
                them out (keyword only; default False).
        """
        self.register()
        if not _has_data(data):
            data, present = self.empty_batch(batch_size)
            strata, skip, sample = None, (), self.names
        else:
            absent = self.absent_names(data)
            stratify = stratify and not sample_missing
            data, present = self.prepare(data, mask)
            strata = self.layout(present, subsets) if stratify else None
            skip = absent if not stratify and not sample_missing else ()
            sample = absent if sample_missing else ()
        with self.stratified(strata), pyro.plate("data", present.size(1), dim=DATA_DIM):
            latents = self.sample_latents(present, strata)
            reconstruct = present if strata is None else strata.reconstruct_mask(present)
            members = None if strata is None else strata.members
            decode = None if strata is None else strata.decode_indices(present.device)
            self.observe(latents, data, reconstruct, members, skip=skip, sample=sample,
                         decode=decode)

    def sample_latents(self, present: Tensor, strata: Strata | None) -> Tensor | dict[str, Tensor]:
        r"""The model's latent sites inside the data (and strata) plate: :math:`z \sim p(z)`,
        scaled by :math:`\beta`. Returns what the decoders read: one tensor for all
        modalities, or a dict by modality name (e.g. ``[z, w_m]`` in MMVAE+).

        Args:
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout`, or ``None`` (unstratified).
        """
        with poutine.scale(scale=self.current_beta):
            return pyro.sample("z", self.prior())

    def empty_batch(self, batch_size: int | None) -> tuple[dict[str, Tensor], Tensor]:
        """``({}, present)`` for a batch of ``batch_size`` rows with no observation (all
        modalities are sampled).

        Args:
            batch_size: the number of rows, a positive int; ``None`` raises ``ValueError``
                (the model was called with neither data nor a batch size).
        """
        if batch_size is None or isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError("the model needs data, or batch_size=N (a positive int) to "
                             "sample every modality from the prior, as pyro.infer.Predictive "
                             "does: Predictive(vae.model, num_samples=k)(batch_size=N)")
        device = self._prior_loc.device
        return {}, torch.ones(len(self.mods), int(batch_size), dtype=torch.bool, device=device)

    def register(self) -> None:
        """``pyro.module(self.pyro_name, self)``: expose the parameters to Pyro's param store
        (what :class:`pyro.infer.SVI` optimises).

        Every model instance has its own ``pyro_name`` (``mmvae``, ``mmvae_1``, ...), so two
        models, and the user's own parameters, coexist in one param store. The library's
        training engine optimises the module's parameters directly and switches this off
        (``pyro_register = False``) while it trains.

        Pyro's param store keeps a *contiguous copy* of a tensor in another memory layout,
        so a channels-last convolution weight (``--memory-format``, or a run loaded with
        :func:`~pyro_mmvae.runs.load_run`) would be optimised by SVI as that copy while the
        network kept its own, unchanged weight. Registration therefore puts such weights
        back in the contiguous layout first (the library's engine, which optimises the
        module's parameters itself, keeps channels-last).
        """
        if self.pyro_register:
            for param in self.parameters():
                if param.dim() == 4 and not param.is_contiguous():
                    param.data = param.data.contiguous()
            pyro.module(self.pyro_name, self)

    def absent_names(self, data: Data) -> tuple[str, ...]:
        """Modalities left out of ``data`` altogether (or given as None): an unstratified
        model does not decode them, their observations being masked in every row anyway.

        Args:
            data: dict modality name -> tensor or ``None`` (not a dict: nothing is absent).
        """
        if not isinstance(data, Mapping):
            return ()
        return tuple(n for n in self.names if data.get(n) is None)

    def observe(self, latents: Tensor | dict[str, Tensor], data: dict[str, Tensor],
                reconstruct: Tensor, members: Tensor | None = None,
                skip: Collection[str] = (), sample: Collection[str] = (),
                decode: Sequence[Tensor | None] | None = None) -> None:
        """One observe site per modality, weighted by :math:`\\lambda_m`.

        ``latents`` is what the decoders read (one tensor, or one per modality name).
        ``reconstruct[m]`` (``(B,)`` or ``(S, B)``) masks the rows, or the strata and rows,
        in which modality m is scored. With ``members`` (bool ``(S, M)``), modality m's
        decoder runs only on the strata that reconstruct it (MVAE's unimodal ELBOs would
        otherwise decode every modality in every stratum). Modalities in ``skip`` (absent
        from the whole batch) get no site and no decoder pass; those in ``sample`` are drawn
        from the likelihood instead of observed. ``decode`` (from
        :meth:`Strata.decode_indices`) names the strata each decoder runs on without reading
        ``members`` on the host.

        Args:
            latents: decoder input, ``(..., B, D)`` (with strata ``(..., S, B, D)``), or a
                dict modality name -> such a tensor.
            data: every modality, filled as :meth:`prepare` returns it.
            reconstruct: bool ``(M, B)`` or ``(M, S, B)``, where each observation is scored.
            members: optional bool ``(S, M)``, the modalities each stratum reconstructs.
            skip: names of modalities that get no site at all.
            sample: names of modalities drawn instead of observed.
            decode: optional per-modality long indices of the strata its decoder runs on.
        """
        for i, (name, mod) in enumerate(self.mods.items()):
            if name in skip:
                continue
            latent = latents[name] if isinstance(latents, dict) else latents
            if decode is not None:
                params = self._decode_strata(mod, latent, index=decode[i])
            else:
                params = self._decode_strata(mod, latent,
                                             None if members is None else members[:, i])
            fn = mod.likelihood.distribution(params, len(mod.event_shape))
            with poutine.scale(scale=mod.weight):
                if name in sample:
                    pyro.sample(f"x_{name}", fn)
                    continue
                with poutine.mask(mask=reconstruct[i]):
                    pyro.sample(f"x_{name}", fn, obs=data[name])

    @staticmethod
    def _decode_strata(mod: Modality, z: Tensor, rows: Tensor | None = None,
                       index: Tensor | None = None) -> Tensor:
        """Decoder parameters for z ``(..., S, B, D)``, computed only on the strata in ``index``
        (long, on z's device) or, when only ``rows`` (bool ``(S,)``) is given, on those it
        marks (read on the host: a sync on an accelerator).

        The other strata get zeros: they are masked out of the likelihood anyway.
        """
        if (rows is None and index is None) or z.dim() < 3:
            return mod.decode(z)
        if index is None:
            rows = rows.cpu()
            if bool(rows.all()):
                return mod.decode(z)
            index = rows.nonzero().squeeze(1).to(z.device)
        dim = z.dim() - 3
        params = mod.decode(z.index_select(dim, index))
        full = params.new_zeros(z.shape[:-1] + params.shape[z.dim() - 1:])
        return full.index_copy(dim, index, params)

    def guide(self, data: Data, mask: Mask = None, subsets: Tensor | None = None,
              stratify: bool = True, *, batch_size: int | None = None,
              sample_missing: bool = False) -> None:
        """Draw z from the model's inference network (see :meth:`latent_posterior`).

        With ``stratify=False`` z is drawn once per data point from the full posterior of
        the present modalities and scored by its density: a proper importance proposal.

        Args:
            data: the batch, as in :meth:`model` (dict modality name -> ``(B, ...)`` tensor
                or ``None``).
            mask: optional dict modality name -> bool ``(B,)`` presence, as in :meth:`model`.
            subsets: optional bool ``(k, M)`` extra strata, the same as the model's.
            stratify: lay out strata (default True) or draw one z per data point.
            batch_size: accepted for :class:`pyro.infer.Predictive` symmetry with
                :meth:`model`; unused (the guide needs data).
            sample_missing: as in :meth:`model`; implies ``stratify=False``.
        """
        self.register()
        stratify = stratify and not sample_missing
        data, present = self.prepare(data, mask)
        strata = self.layout(present, subsets) if stratify else None
        qz = self.latent_posterior(data, present, strata, stratify)
        with self.stratified(strata), pyro.plate("data", present.size(1), dim=DATA_DIM):
            with poutine.scale(scale=self.current_beta):
                pyro.sample("z", qz)

    def latent_posterior(self, data: dict[str, Tensor], present: Tensor,
                         strata: Strata | None, stratify: bool) -> TorchDistribution:
        """The distribution z is drawn from: batch ``(S, B)`` with strata, else ``(B,)``.

        Args:
            data: every modality, filled as :meth:`prepare` returns it.
            present: bool ``(M, B)``, True where modality m is observed in row b.
            strata: the layout from :meth:`layout`, or ``None``.
            stratify: whether the guide lays out strata (False: one z per data point, drawn
                from the full posterior of the present modalities).
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ generation
    def posterior(self, data: Data, sources: Sequence[str]) -> TorchDistribution:
        """:math:`q(z \\mid X_S)` for the source modalities S, batch shape ``(B,)``.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)``; must hold the sources.
            sources: the names of the modalities S to condition on.
        """
        raise NotImplementedError

    def posterior_location(self, data: Data, sources: Sequence[str],
                           posterior: str = "mean") -> Tensor:
        """The point in latent space conditional generation decodes: the mean of
        :math:`q(z|X_S)`, or a draw from it with ``posterior="sample"``.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)``; must hold the sources.
            sources: the names of the modalities S to condition on.
            posterior: ``"mean"`` (default) or ``"sample"`` (:data:`POSTERIOR_POINTS`).

        Returns:
            ``(B, D)``.
        """
        return posterior_point(self.posterior(data, sources), posterior)

    # ------------------------------------------------------------------ cached experts
    def encode_experts(self, data: Data) -> dict[str, Tensor]:
        """Run every unimodal encoder once: ``{"loc", "scale"}`` of shape ``(M, B, D)``.

        The cache :meth:`posterior_from_experts` and :meth:`generation_latents` read, so that
        an evaluation visiting many source subsets S encodes each data point once.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)`` or ``None``; absent
                modalities are encoded from zeros (never used as sources).
        """
        filled, _ = self.prepare(data)
        loc, scale = self.expert_params(filled)
        return {"loc": loc, "scale": scale}

    def source_mask(self, sources: Sequence[str], like: Tensor) -> Tensor:
        """Bool ``(M, B)``: True on the rows of the ``sources`` (``like``: ``(M, B, D)``).

        Args:
            sources: the names of the source modalities.
            like: a tensor ``(M, B, ...)`` whose first two sizes and device are used.
        """
        rows = constant_table(tuple(n in sources for n in self.names), torch.bool, like.device)
        return rows.unsqueeze(-1).expand(like.shape[:2])

    def posterior_from_experts(self, experts: Mapping[str, Tensor],
                               sources: Sequence[str]) -> TorchDistribution:
        """:meth:`posterior` from cached experts (:meth:`encode_experts` of a batch holding
        at least the sources): the same distribution, drawing the same random numbers.

        Args:
            experts: the cache from :meth:`encode_experts` (``"loc"``, ``"scale"``:
                ``(M, B, D)``).
            sources: the names of the modalities S to condition on.
        """
        raise NotImplementedError(f"{type(self).__name__} builds no posterior from cached "
                                  "experts")

    def generation_latents(self, experts: Mapping[str, Tensor], sources: Sequence[str],
                           targets: Sequence[str], posterior: str = "mean"
                           ) -> dict[str, Tensor]:
        """The decoder input of each target that :meth:`generate` would decode, from cached
        experts; ``mods[t].mean(latents[t])`` is ``generate(...)[t]``. ``posterior``: the
        mean of :math:`q(z|X_S)` or one draw from it (:data:`POSTERIOR_POINTS`).

        Args:
            experts: the cache from :meth:`encode_experts`.
            sources: the names of the modalities S to condition on.
            targets: the names of the modalities to generate.
            posterior: ``"mean"`` (default) or ``"sample"``.

        Returns:
            Dict target name -> decoder input ``(B, D_in)``.
        """
        q = self.posterior_from_experts(experts, self._check_names(sources, "source"))
        z = posterior_point(q, posterior)
        return {t: z for t in self._check_names(targets, "target")}

    def _check_names(self, names: Sequence[str], what: str) -> list[str]:
        names = list(names)
        unknown = [n for n in names if n not in self.mods]
        if unknown:
            raise ValueError(f"unknown {what} modality name(s) {unknown}; this model has "
                             f"{list(self.names)}")
        if not names:
            raise ValueError(f"need at least one {what} modality")
        return names

    def generate(
        self,
        data: Data,
        sources: Sequence[str],
        targets: Sequence[str] | None = None,
        posterior: str = "mean",
    ) -> dict[str, Tensor]:
        """Decoder means of ``targets`` (default: all) generated from :math:`q(z|X_{sources})`.

        Decodes the posterior mean, or with ``posterior="sample"`` one draw
        :math:`z \\sim q(z|X_S)` per data point (:meth:`posterior_location`), through the
        expert cache (:meth:`encode_experts`, :meth:`generation_latents`) where the model
        has one. Call under ``torch.no_grad()``.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)``; must hold the sources
                (other entries are ignored).
            sources: the names of the modalities S to condition on (at least one).
            targets: the names of the modalities to generate; ``None``: all of them.
            posterior: ``"mean"`` (default) or ``"sample"`` (:data:`POSTERIOR_POINTS`).

        Returns:
            Dict target name -> decoder mean ``(B, *event_shape)``.
        """
        check_posterior_point(posterior)
        sources = self._check_names(sources, "source")
        targets = self._check_names(self.names if targets is None else targets, "target")
        missing = [s for s in sources if data.get(s) is None]
        if missing:
            raise ValueError(f"source modality {missing} not in the data")
        given = {s: data[s] for s in sources}
        if type(self).posterior_from_experts is MultimodalVAE.posterior_from_experts:
            z = self.posterior_location(given, sources, posterior)  # no expert cache
            return {t: self.mods[t].mean(z) for t in targets}
        latents = self.generation_latents(self.encode_experts(given), sources, targets,
                                          posterior)
        return {t: self.mods[t].mean(latents[t]) for t in targets}

    def sample(self, num: int) -> dict[str, Tensor]:
        """Unconditional generation: decoder means for :math:`z \\sim p(z)`.

        Args:
            num: the number of samples N.

        Returns:
            Dict modality name -> decoder mean ``(N, *event_shape)``.
        """
        z = self.prior().sample((num,))
        return {name: mod.mean(z) for name, mod in self.mods.items()}

    def reconstruct(self, data: Data) -> dict[str, Tensor]:
        """Decoder means generated from all modalities of ``data``.

        Args:
            data: dict modality name -> tensor ``(B, *event_shape)``; the non-``None``
                entries are the sources.

        Returns:
            Dict modality name -> decoder mean ``(B, *event_shape)``, for every modality.
        """
        sources = [k for k, v in data.items() if v is not None]
        return self.generate(data, sources)

