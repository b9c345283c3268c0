"""The model zoo: build any model of the library for a dataset, by name and preset.

=============  ============================  ==================  ======================
name           joint posterior               objective           paper
=============  ============================  ==================  ======================
mmvae          MoE, stratified over experts  ``MixtureELBO``     Shi et al. 2019
mvae           PoE + prior expert            ``SubsampledELBO``  Wu & Goodman 2018
mopoe          MoPoE, stratified or single   ``MoPoEELBO``       Sutter et al. 2021
mmvae_plus     MoE over z; private w_m,      ``MMVAEPlusELBO``   Palumbo et al. 2023
               learned auxiliary priors r_m
mmvae_private  as mmvae_plus, cross-modal    ``MMVAEPlusELBO``   Palumbo et al. 2023
               w_d from q_d(w_d|x_d)                             (baseline)
jmvae          joint encoder (PoE of q_m     ``JMVAEELBO``       Suzuki et al. 2016
               for subsets)
telbo          joint encoder, two stages     ``TELBOELBO``       Vedantam et al. 2018
mvtcae         PoE                           ``MVTCAEELBO``      Hwang et al. 2021
crmvae         PoE + reconstructions from    ``CRMVAEELBO``      *Mitigating the
               each q_m                                          limitations of multimodal
                                                                 VAEs with coordination-based
                                                                 approach* (2023; the name
                                                                 is MultiVae's)
=============  ============================  ==================  ======================

``build_model(name, dataset, preset=None, **overrides)`` returns a :class:`ModelSpec`: the
Pyro model/guide pair (``spec.vae.model``, ``spec.vae.guide``), its ELBO, and the training
defaults. Settings resolve as: library defaults < preset < explicit overrides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.infer import ELBO
from torch import nn

from pyro_mmvae.infer import (
    CRMVAEELBO,
    JMVAEELBO,
    MVTCAEELBO,
    TELBOELBO,
    MixtureELBO,
    MMVAEPlusELBO,
    MoPoEELBO,
    SubsampledELBO,
)
from pyro_mmvae.modality import Modality
from pyro_mmvae.models import MMVAE, MVAE, CoordinationVAE, MMVAEPlus, MoPoE, MultimodalVAE
from pyro_mmvae.presets import (  # noqa: F401  (PRESETS: re-exported for users)
    DATASET_DEFAULTS,
    DATASET_MODEL_DEFAULTS,
    JNF_DCCA_STAGES,
    JNF_STAGES,
    PRESETS,
    TELBO_STAGES,
    preset_settings,
)
from pyro_mmvae.settings import DEFAULTS as SETTING_DEFAULTS
from pyro_mmvae.settings import Settings, make_settings

__all__ = [
    "DEFAULTS",
    "MODEL_DEFAULTS",
    "PRESETS",
    "ModelSpec",
    "build_from_settings",
    "build_joint_encoder",
    "build_model",
    "build_modalities",
    "build_networks",
    "build_private_modalities",
    "modality_choice",
    "modality_kind",
    "model_names",
    "register_model",
    "resolve_settings",
]

#: Defaults of every setting, name -> value (the library defaults of
#: :mod:`pyro_mmvae.settings`, before dataset, model and preset defaults).
DEFAULTS: dict[str, Any] = dict(SETTING_DEFAULTS)
TRAIN_KEYS = ("lr", "amsgrad", "batch_size", "epochs")


@dataclass
class ModelSpec:
    """A built model: the Pyro model/guide pair, its objective and training defaults.

    Attributes:
        name: the model's name in the zoo, e.g. ``"mmvae"``.
        vae: the model, an ``nn.Module`` with Pyro ``model(batch)`` and ``guide(batch)``.
        elbo: its objective, a :class:`pyro.infer.ELBO` subclass.
        train_defaults: ``lr``, ``amsgrad``, ``batch_size``, ``epochs`` (and ``stages`` when
            the model has a schedule) from the settings.
        preset: the preset it was built with, or None.
        settings: the resolved settings it was built from.
    """

    name: str
    vae: MultimodalVAE
    elbo: ELBO
    train_defaults: dict[str, Any]
    preset: str | None = None
    settings: Settings = field(default_factory=Settings)


def _is_image(shape: torch.Size) -> bool:
    return len(shape) == 3 and shape[0] in (1, 3)


def build_networks(nets: str, event_shape: torch.Size, param_shape: torch.Size,
                   latent_dim: int, hidden=(400, 400)) -> tuple[nn.Module, nn.Module]:
    """An (encoder, decoder) pair: ``"mlp"`` for any shape, ``"resnet"`` or ``"conv"`` for
    3x28x28 images.

    Args:
        nets: ``"mlp"``, ``"resnet"`` or ``"conv"``.
        event_shape: shape of one observation of the modality, e.g. ``(3, 28, 28)``.
        param_shape: shape of the likelihood parameters the decoder outputs per observation
            (equal to ``event_shape`` for per-pixel likelihoods).
        latent_dim: size of the latent the decoder reads; the encoder outputs the two
            parameters (location, raw scale) of a ``latent_dim`` posterior.
        hidden: widths of the MLP hidden layers (ignored by ``resnet`` and ``conv``).

    Raises:
        ValueError: for an unknown family, or ``resnet``/``conv`` on other shapes.
    """
    from pyro_mmvae.nets.conv import PolyMNISTConvDecoder, PolyMNISTConvEncoder
    from pyro_mmvae.nets.mlp import MLPDecoder, MLPEncoder
    from pyro_mmvae.nets.polymnist import PolyMNISTResNetDecoder, PolyMNISTResNetEncoder

    if nets == "mlp":
        image = _is_image(event_shape)
        activation = "sigmoid" if image and param_shape == event_shape else None
        centre = {"input_offset": 0.5, "input_scale": 0.5} if image else {}
        return (MLPEncoder(event_shape, latent_dim, hidden=hidden, **centre),
                MLPDecoder(latent_dim, param_shape, hidden=hidden, output_activation=activation))
    if nets in ("resnet", "conv"):
        if tuple(event_shape) != (3, 28, 28) or param_shape != event_shape:
            raise ValueError(f"the PolyMNIST {nets} networks need 3x28x28 images with a "
                             f"per-pixel likelihood, got event shape {tuple(event_shape)}")
        if nets == "conv":
            return PolyMNISTConvEncoder(latent_dim), PolyMNISTConvDecoder(latent_dim)
        return PolyMNISTResNetEncoder(latent_dim), PolyMNISTResNetDecoder(latent_dim)
    raise ValueError(f"unknown network family {nets!r}; choose 'mlp', 'resnet' or 'conv'")


def modality_kind(dataset, name: str) -> str:
    """``"tokens"`` (integer ids with a vocabulary), ``"image"`` (C, H, W with C in 1, 3) or
    ``"vector"`` (anything else): from the dataset's ``kinds``/``vocab_sizes`` and shapes.

    Args:
        dataset: a dataset with ``event_shapes`` (and optionally ``kinds``, ``vocab_sizes``).
        name: one of its modalities.
    """
    kinds = getattr(dataset, "kinds", None) or {}
    if name in kinds:
        return kinds[name]
    if name in (getattr(dataset, "vocab_sizes", None) or {}):
        return "tokens"
    return "image" if _is_image(torch.Size(dataset.event_shapes[name])) else "vector"


def modality_choice(dataset, name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What modality ``name`` is built with: ``{"kind", "nets", "likelihood",
    "likelihood_scale", "vocab_size"}``.

    Defaults by kind: images take ``settings["nets"]`` and ``settings["likelihood"]``
    (Laplace); token sequences (integer ids) the text networks
    (:mod:`pyro_mmvae.nets.text`) and a Categorical over the dataset's vocabulary; vectors of
    a files dataset (which declares ``kinds``) MLPs and a Normal, other vectors the global
    settings. ``settings["modalities"][name]`` overrides any of them.

    Args:
        dataset: the dataset (``event_shapes``, optionally ``kinds`` and ``vocab_sizes``).
        name: one of its modalities.
        settings: the model's settings by name (a :class:`~pyro_mmvae.settings.Settings` or
            a mapping with ``nets``, ``likelihood``, ``likelihood_scale``, ``modalities``).

    Raises:
        ValueError: for a categorical likelihood without a vocabulary, or text networks
            with another likelihood.
    """
    kind = modality_kind(dataset, name)
    vocab = (getattr(dataset, "vocab_sizes", None) or {}).get(name)
    if kind == "tokens":
        choice = {"nets": "text", "likelihood": "categorical"}
    elif kind == "vector" and getattr(dataset, "kinds", None):
        choice = {"nets": settings["nets"], "likelihood": "normal"}
    else:
        choice = {"nets": settings["nets"], "likelihood": settings["likelihood"]}
    choice.update({"kind": kind, "likelihood_scale": settings["likelihood_scale"],
                   "vocab_size": vocab})
    choice.update((settings.get("modalities") or {}).get(name, {}))
    if choice["likelihood"] == "categorical" and choice["vocab_size"] is None:
        raise ValueError(f"modality {name!r} has a categorical likelihood but no known "
                         f"vocabulary; set modalities.{name}.vocab_size=V (or store its token "
                         "ids as integers)")
    if choice["nets"] == "text" and choice["likelihood"] != "categorical":
        raise ValueError(f"modality {name!r}: the text networks need the categorical "
                         f"likelihood, not {choice['likelihood']!r}")
    return choice


def _likelihood_of(choice: Mapping[str, Any]):
    from pyro_mmvae.likelihoods import get_likelihood

    kind = choice["likelihood"]
    if kind in ("laplace", "normal"):
        return get_likelihood(kind, scale=choice["likelihood_scale"])
    if kind == "categorical":
        return get_likelihood(kind, num_classes=choice["vocab_size"])
    return get_likelihood(kind)


def _modality_networks(choice: Mapping[str, Any], shape: torch.Size, param_shape: torch.Size,
                       latent_dim: int, hidden: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """The (encoder, decoder) of a modality: text networks for token sequences, else
    :func:`build_networks`."""
    if choice["nets"] == "text" or (choice["kind"] == "tokens" and choice["nets"] == "mlp"
                                    and choice["likelihood"] == "categorical"):
        from pyro_mmvae.nets.text import TextDecoder, TextEncoder

        if len(shape) != 1:
            raise ValueError(f"the text networks need token sequences (L,), got {tuple(shape)}")
        vocab = int(choice["vocab_size"])
        return (TextEncoder(shape[0], vocab, latent_dim, hidden),
                TextDecoder(latent_dim, shape[0], vocab, hidden))
    return build_networks(choice["nets"], shape, param_shape, latent_dim, hidden)


def build_modalities(dataset, settings: Mapping[str, Any]) -> list[Modality]:
    """One :class:`Modality` per modality of ``dataset`` with the chosen networks/likelihood
    (see :func:`modality_choice`).

    Args:
        dataset: the dataset (``modalities``, ``event_shapes``, ...).
        settings: the model's settings by name (``latent_dim``, ``hidden``, ``nets``,
            ``likelihood``, ``likelihood_scale``, ``modalities``).

    Raises:
        ValueError: when ``settings["modalities"]`` names a modality the dataset lacks.
    """
    unknown = set(settings.get("modalities") or {}) - set(dataset.modalities)
    if unknown:
        raise ValueError(f"setting modalities names unknown modalities {sorted(unknown)}; the "
                         f"dataset has {list(dataset.modalities)}")
    modalities = []
    for name in dataset.modalities:
        shape = torch.Size(dataset.event_shapes[name])
        choice = modality_choice(dataset, name, settings)
        likelihood = _likelihood_of(choice)
        encoder, decoder = _modality_networks(choice, shape, likelihood.param_shape(shape),
                                              settings["latent_dim"], tuple(settings["hidden"]))
        modalities.append(Modality(name, shape, likelihood, encoder, decoder))
    return modalities


def _build_mmvae(dataset, s: Settings) -> tuple[MultimodalVAE, ELBO]:
    vae = MMVAE(build_modalities(dataset, s), s["latent_dim"], **_common(s))
    return vae, _objective(MixtureELBO, s)


def _objective(cls: type[ELBO], s: Settings, **kwargs: Any) -> ELBO:
    """The objective ``cls`` with the K particles and estimator of the settings."""
    return cls(num_particles=s["num_particles"], estimator=s["estimator"], **kwargs)


def _common(s: Settings) -> dict[str, Any]:
    return {"posterior": s["posterior"], "scale_param": s["scale_param"], "beta": s["beta"],
            "kl_warmup_epochs": s["kl_warmup_epochs"]}


def _build_mvae(dataset, s: Settings) -> tuple[MultimodalVAE, ELBO]:
    mods = build_modalities(dataset, s)
    vae = MVAE(mods, s["latent_dim"], prior_expert=s["prior_expert"], **_common(s))
    elbo = _objective(SubsampledELBO, s, num_modalities=len(mods),
                      num_subsets=s["num_subsets"])
    return vae, elbo


def _build_mopoe(dataset, s: Settings) -> tuple[MultimodalVAE, ELBO]:
    vae = MoPoE(build_modalities(dataset, s), s["latent_dim"], sampling=s["subset_sampling"],
                prior_expert=s["prior_expert"], **_common(s))
    return vae, _objective(MoPoEELBO, s)


def build_private_modalities(dataset, settings: Mapping[str, Any]) -> list[Modality]:
    """Modalities for shared + private latents: decoders read ``[z, w_m]`` (Dz + Dw inputs);
    MLP encoders output Dz + Dw (split by the model) or, with ``private_encoder="separate"``,
    are two MLPs (:class:`~pyro_mmvae.nets.mlp.PairedEncoder`); the ResNet and the conv
    encoder get a private tower.

    Args:
        dataset: the dataset.
        settings: the model's settings by name, as for :func:`build_modalities`, with
            ``latent_dim`` (Dz) and ``private_dim`` (Dw).
    """
    from pyro_mmvae.nets.conv import PolyMNISTConvEncoder
    from pyro_mmvae.nets.mlp import PairedEncoder
    from pyro_mmvae.nets.polymnist import PolyMNISTResNetEncoder

    dz, dw = settings["latent_dim"], settings["private_dim"]
    modalities = build_modalities(dataset, {**settings, "latent_dim": dz + dw})
    towers = {"resnet": PolyMNISTResNetEncoder, "conv": PolyMNISTConvEncoder}
    if settings["nets"] in towers:
        for mod in modalities:
            mod.encoder = towers[settings["nets"]](dz, dw)
    elif settings.get("private_encoder", "shared") == "separate":
        shared = build_modalities(dataset, {**settings, "latent_dim": dz})
        private = build_modalities(dataset, {**settings, "latent_dim": dw})
        for mod, z_mod, w_mod in zip(modalities, shared, private, strict=True):
            mod.encoder = PairedEncoder(z_mod.encoder, w_mod.encoder)
    return modalities


def _build_mmvae_plus(dataset, s: Settings) -> tuple[MultimodalVAE, ELBO]:
    vae = MMVAEPlus(build_private_modalities(dataset, s), s["latent_dim"], s["private_dim"],
                    aux_prior=s["aux_prior"], **_common(s))
    return vae, _objective(MMVAEPlusELBO, s)


def _build_cmvae(dataset, s: Settings) -> tuple[MultimodalVAE, ELBO]:
    """CMVAE (Palumbo et al. 2024): MMVAE+ with a C-cluster mixture prior on z, the cluster
    enumerated exactly by :class:`~pyro_mmvae.infer.CMVAEELBO`."""
    from pyro_mmvae.infer.cmvae import CMVAEELBO
    from pyro_mmvae.models.cmvae import CMVAE

    vae = CMVAE(build_private_modalities(dataset, s), s["latent_dim"], s["private_dim"],
                num_clusters=s["cmvae_clusters"], aux_prior=s["aux_prior"], **_common(s))
    return vae, _objective(CMVAEELBO, s)


def _build_dmvae(dataset, s: Settings) -> tuple[MultimodalVAE, ELBO]:
    from pyro_mmvae.infer.dmvae import DMVAEELBO
    from pyro_mmvae.models.dmvae import DMVAE

    vae = DMVAE(build_private_modalities(dataset, s), s["latent_dim"], s["private_dim"],
                private_beta=s["dmvae_private_beta"], **_common(s))
    return vae, _objective(DMVAEELBO, s)


def _build_cvae(dataset, s: Settings) -> tuple[MultimodalVAE, ELBO]:
    """The conditional VAE: source and target from ``cvae_source``/``cvae_target`` (default:
    the first modality and the next one), encoders with ``joint_features`` outputs per head,
    the target's decoder reading ``[z, h(x_s)]``."""
    from pyro_mmvae.infer.cvae import CVAEELBO
    from pyro_mmvae.models.cvae import CVAE

    names = list(dataset.modalities)
    if len(names) < 2:
        raise ValueError(f"the conditional VAE needs two modalities; the dataset has {names}")
    source = s["cvae_source"] or names[0]
    if source not in names:
        raise ValueError(f"setting cvae_source: unknown modality {source!r}; the dataset has "
                         f"{names}")
    target = s["cvae_target"] or next(n for n in names if n != source)
    if target not in names or target == source:
        raise ValueError(f"setting cvae_target: {target!r} must be a modality of {names} "
                         f"other than the source {source!r}")
    feats, hidden = s["joint_features"], tuple(s["hidden"])
    mods = {}
    for name in (source, target):
        shape = torch.Size(dataset.event_shapes[name])
        choice = modality_choice(dataset, name, s)
        likelihood = _likelihood_of(choice)
        param_shape = likelihood.param_shape(shape)
        encoder = _modality_networks(choice, shape, param_shape, feats, hidden)[0]
        decoder = (_modality_networks(choice, shape, param_shape, s["latent_dim"] + 2 * feats,
                                      hidden)[1] if name == target else nn.Identity())
        mods[name] = Modality(name, shape, likelihood, encoder, decoder)
    vae = CVAE(mods[source], mods[target], s["latent_dim"], feature_dim=feats,
               hidden=hidden[-1], prior=s["cvae_prior"], **_common(s))
    return vae, _objective(CVAEELBO, s)


def _build_jnf(dataset, s: Settings) -> tuple[MultimodalVAE, ELBO]:
    """JNF: the coordination models' joint encoder, the modalities' encoders as the base
    Normals of ``jnf_flows`` Pyro MAF layers (widths ``jnf_flow_hidden``), ``JNFELBO``."""
    from pyro_mmvae.infer.jnf import JNFELBO
    from pyro_mmvae.models.jnf import JNF

    if s["posterior"] != "normal":
        raise ValueError(f"jnf needs posterior=normal (its base distributions and joint "
                         f"encoder are Normal), got posterior={s['posterior']!r}")
    vae = JNF(build_modalities(dataset, s), s["latent_dim"],
              joint_encoder=build_joint_encoder(dataset, s), num_flows=s["jnf_flows"],
              flow_hidden=tuple(s["jnf_flow_hidden"]), **_common(s))
    return vae, _objective(JNFELBO, s)


def _build_jnf_dcca(dataset, s: Settings) -> tuple[MultimodalVAE, ELBO]:
    """JNF-DCCA: as :func:`_build_jnf`, each unimodal encoder a
    :class:`~pyro_mmvae.models.jnf.DCCAEncoder`: a fresh encoder of the modality's
    architecture with ``jnf_dcca_dim`` outputs (its location head is the embedding), then an
    MLP head of width ``hidden[-1]``."""
    from pyro_mmvae.infer.jnf import JNFDCCAELBO
    from pyro_mmvae.models.jnf import JNFDCCA, DCCAEncoder
    from pyro_mmvae.nets.mlp import MLPEncoder

    if s["posterior"] != "normal":
        raise ValueError(f"jnf_dcca needs posterior=normal, got posterior={s['posterior']!r}")
    modalities = build_modalities(dataset, s)
    hidden, dim = tuple(s["hidden"]), s["jnf_dcca_dim"]
    for mod in modalities:
        choice = modality_choice(dataset, mod.name, s)
        embed = _modality_networks(choice, mod.event_shape, mod.param_shape, dim, hidden)[0]
        head = MLPEncoder((dim,), s["latent_dim"], hidden=hidden[-1:])
        mod.encoder = DCCAEncoder(embed, head)
    vae = JNFDCCA(modalities, s["latent_dim"], joint_encoder=build_joint_encoder(dataset, s),
                  num_flows=s["jnf_flows"], flow_hidden=tuple(s["jnf_flow_hidden"]),
                  **_common(s))
    return vae, _objective(JNFDCCAELBO, s)


def _build_hierarchical(name: str, dataset, s: Settings) -> tuple[MultimodalVAE, ELBO]:
    """MHVAE or Nexus (:mod:`pyro_mmvae.models.hierarchical`): modality latents of size
    ``hier_modality_dim`` below a top latent of size ``latent_dim``."""
    from pyro_mmvae.infer.hierarchical import MHVAEELBO, NexusELBO
    from pyro_mmvae.models.hierarchical import MHVAE, Nexus

    mods = build_modalities(dataset, {**s, "latent_dim": s["hier_modality_dim"]})
    shared = {"top_beta": s["hier_top_beta"], "modality_dropout": s["hier_modality_dropout"],
              "top_hidden": (tuple(s["hidden"])[-1],), **_common(s)}
    if name == "nexus":
        vae = Nexus(mods, s["latent_dim"], s["hier_modality_dim"],
                    message_dim=s["nexus_message_dim"], gamma=s["nexus_gamma"], **shared)
        return vae, _objective(NexusELBO, s)
    return MHVAE(mods, s["latent_dim"], s["hier_modality_dim"], **shared), \
        _objective(MHVAEELBO, s)


def _build_mhvae(dataset, s: Settings) -> tuple[MultimodalVAE, ELBO]:
    return _build_hierarchical("mhvae", dataset, s)


def _build_nexus(dataset, s: Settings) -> tuple[MultimodalVAE, ELBO]:
    return _build_hierarchical("nexus", dataset, s)


def build_joint_encoder(dataset, s: Settings) -> nn.Module:
    """The default joint encoder (:class:`~pyro_mmvae.nets.JointEncoder`): for each modality a
    fresh encoder of the unimodal architecture with ``joint_features`` outputs per head, then
    one hidden layer of width ``hidden[-1]``.

    Args:
        dataset: the dataset.
        s: the model's settings (``joint_features``, ``latent_dim``, ``hidden`` and the
            per-modality choices).
    """
    from pyro_mmvae.nets.joint import JointEncoder

    encoders = {}
    for name in dataset.modalities:
        shape = torch.Size(dataset.event_shapes[name])
        choice = modality_choice(dataset, name, s)
        param_shape = _likelihood_of(choice).param_shape(shape)
        encoders[name] = _modality_networks(choice, shape, param_shape, s["joint_features"],
                                            tuple(s["hidden"]))[0]
    return JointEncoder.from_encoders(encoders, s["joint_features"], s["latent_dim"],
                                      hidden=(tuple(s["hidden"])[-1],))


def _coordination_vae(dataset, s: Settings, joint: str) -> CoordinationVAE:
    return CoordinationVAE(
        build_modalities(dataset, s), s["latent_dim"], joint=joint,
        joint_encoder=build_joint_encoder(dataset, s) if joint == "encoder" else None,
        unimodal_targets=s["unimodal_targets"], decoder_stop_gradient=s["decoder_stop_gradient"],
        prior_expert=s["prior_expert"],
        incomplete_joint=s["incomplete_joint"] if joint == "encoder" else "poe", **_common(s))


#: The coordination family: objective, joint posterior, settings the objective reads.
_COORDINATION_OBJECTIVES: dict[str, tuple[type[ELBO], str, tuple[str, ...]]] = {
    "jmvae": (JMVAEELBO, "encoder", ("alpha",)),
    "telbo": (TELBOELBO, "encoder", ()),
    "mvtcae": (MVTCAEELBO, "poe", ("alpha",)),
    "crmvae": (CRMVAEELBO, "poe", ()),
}


def _coordination_builder(name: str) -> Callable[[Any, Settings], tuple[MultimodalVAE, ELBO]]:
    """The builder of coordination model ``name`` (JMVAE-KL, TELBO, MVTCAE, CRMVAE)."""
    cls, joint, keys = _COORDINATION_OBJECTIVES[name]

    def build(dataset, s: Settings) -> tuple[MultimodalVAE, ELBO]:
        elbo = _objective(cls, s, **{key: s[key] for key in keys})
        return _coordination_vae(dataset, s, joint), elbo

    build.__name__ = f"_build_{name}"
    return build


#: Settings of the coordination family (JMVAE-KL, TELBO, MVTCAE, CRMVAE).
_COORDINATION = {"prior_expert": False, "unimodal_targets": "none",
                 "decoder_stop_gradient": False}

BUILDERS: dict[str, Callable[[Any, dict[str, Any]], tuple[MultimodalVAE, ELBO]]] = {
    "mmvae": _build_mmvae,
    "mvae": _build_mvae,
    "mopoe": _build_mopoe,
    "mmvae_plus": _build_mmvae_plus,
    "mmvae_private": _build_mmvae_plus,
    "cmvae": _build_cmvae,
    "jmvae": _coordination_builder("jmvae"),
    "telbo": _coordination_builder("telbo"),
    "mvtcae": _coordination_builder("mvtcae"),
    "crmvae": _coordination_builder("crmvae"),
    "dmvae": _build_dmvae,
    "cvae": _build_cvae,
    "jnf": _build_jnf,
    "jnf_dcca": _build_jnf_dcca,
    "mhvae": _build_mhvae,
    "nexus": _build_nexus,
}
#: Model name -> its default settings, over the dataset defaults: settings that only some
#: models read (a preset or override may set them for any model). :func:`register_model`
#: adds an entry.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mvae": {"prior_expert": True},
    "mopoe": {"prior_expert": False},
    "mmvae_plus": {"private_dim": 20, "aux_prior": "learned"},
    "mmvae_private": {"private_dim": 20, "aux_prior": "posterior"},
    "cmvae": {"private_dim": 20, "aux_prior": "learned", "cmvae_clusters": 10},
    "jmvae": {**_COORDINATION, "alpha": 0.1, "joint_features": 64},
    "telbo": {**_COORDINATION, "joint_features": 64, "unimodal_targets": "own",
              "decoder_stop_gradient": True, "stages": TELBO_STAGES,
              "incomplete_joint": "encoder"},
    "mvtcae": {**_COORDINATION, "alpha": 5 / 6},
    "crmvae": {**_COORDINATION, "unimodal_targets": "own"},
    "dmvae": {"private_dim": 20, "posterior": "normal"},
    "cvae": {"posterior": "normal"},
    "jnf": {"joint_features": 64, "stages": JNF_STAGES},
    "jnf_dcca": {"joint_features": 64, "stages": JNF_DCCA_STAGES},
    "mhvae": {"posterior": "normal", "hier_modality_dropout": 0.5},
    "nexus": {"posterior": "normal", "hier_modality_dropout": 0.5},
}
MODELS: tuple[str, ...] = tuple(BUILDERS)

#: Settings declared by registered models beyond :mod:`pyro_mmvae.settings` (name -> default).
EXTRA_SETTINGS: dict[str, dict[str, Any]] = {}


def register_model(
    name: str,
    builder: Callable[[Any, dict[str, Any]], tuple[nn.Module, ELBO]],
    defaults: dict[str, Any] | None = None,
    replace: bool = False,
) -> None:
    """Add model ``name`` to the zoo (``build_model``, ``train``, ``pyro-mmvae --model``).

    ``builder(dataset, settings)`` returns the ``(vae, elbo)`` pair: ``vae`` an
    ``nn.Module`` with ``model`` and ``guide`` Pyro programs, ``elbo`` a
    :class:`pyro.infer.ELBO` with ``differentiable_loss``. ``settings`` are the zoo's
    :data:`DEFAULTS` (``lr``, ``batch_size``, ``epochs``, ``latent_dim``, ...) updated with
    ``defaults`` (the model's own settings, which ``--set KEY=VALUE`` can then change).

    Args:
        name: the model's name: letters, digits, ``_`` or ``-``.
        builder: ``builder(dataset, settings) -> (vae, elbo)``, as above.
        defaults: the model's default settings, name -> value; names beyond
            :mod:`pyro_mmvae.settings` become settings of this model (checked against the
            type of their default). None: no defaults.
        replace: allow replacing a model already in the zoo (otherwise ValueError).
    """
    global MODELS
    if not str(name).replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"model name {name!r} must be letters, digits, '_' or '-'")
    if name in BUILDERS and not replace:
        raise ValueError(f"model {name!r} is already in the zoo; pass replace=True to "
                         "replace it")
    defaults = dict(defaults or {})
    BUILDERS[name] = builder
    MODEL_DEFAULTS[name] = defaults
    EXTRA_SETTINGS[name] = {k: v for k, v in defaults.items() if k not in SETTING_DEFAULTS}
    MODELS = tuple(BUILDERS)


def model_names() -> tuple[str, ...]:
    """Every model of the zoo, those added with :func:`register_model` included."""
    return tuple(BUILDERS)


def resolve_settings(name: str, preset: str | None = None, dataset_name: str | None = None,
                     **overrides: Any) -> Settings:
    """The settings of model ``name``: library defaults < dataset defaults < model defaults <
    model-on-dataset defaults < preset < ``overrides`` (``None`` values are ignored), each
    value checked once (:func:`pyro_mmvae.settings.make_settings`).

    Args:
        name: a model of the zoo.
        preset: a preset for that model (:data:`~pyro_mmvae.presets.PRESETS`), or None.
        dataset_name: the dataset's name, which picks dataset defaults
            (:data:`~pyro_mmvae.presets.DATASET_DEFAULTS`); None: none.

    Raises:
        ValueError: for an unknown model or preset, or a bad setting.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    values: dict[str, Any] = {}
    values.update(DATASET_DEFAULTS.get(dataset_name, {}))
    values.update(MODEL_DEFAULTS.get(name, {}))
    values.update(DATASET_MODEL_DEFAULTS.get((dataset_name, name), {}))
    if preset is not None:
        values.update(preset_settings(preset, name))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return make_settings(values, extra=EXTRA_SETTINGS.get(name))


def build_model(name: str, dataset, preset: str | None = None, **overrides) -> ModelSpec:
    """Build model ``name`` for ``dataset`` (anything with ``.modalities``/``.event_shapes``).

    Args:
        name: a model of the zoo (:func:`model_names`), e.g. ``"mmvae_plus"``.
        dataset: the dataset the model is for; its ``name`` picks dataset defaults.
        preset: a preset for that model, or None; ``**overrides`` (settings by name, None
            values ignored) come on top (:func:`resolve_settings`).
    """
    settings = resolve_settings(name, preset, getattr(dataset, "name", None), **overrides)
    return build_from_settings(name, dataset, settings, preset)


def build_from_settings(name: str, dataset, settings: Settings,
                        preset: str | None = None) -> ModelSpec:
    """Build model ``name`` for ``dataset`` from resolved ``settings`` (e.g. a run's
    :class:`~pyro_mmvae.run_config.RunSpec` settings); nothing is resolved again.

    Args:
        name: a model of the zoo.
        dataset: the dataset the model is for.
        settings: the complete, checked settings.
        preset: the preset name to record in the :class:`ModelSpec` (not applied).
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    vae, elbo = BUILDERS[name](dataset, settings)
    train_defaults = {k: settings[k] for k in TRAIN_KEYS}
    if settings["stages"]:  # training stages (TELBO), see pyro_mmvae.stages
        train_defaults["stages"] = settings["stages"]
    return ModelSpec(name, vae, elbo, train_defaults, preset, settings)
