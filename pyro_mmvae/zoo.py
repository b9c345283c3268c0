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
crmvae         PoE + reconstructions from    ``CRMVAEELBO``      seed 000 (MultiVae's
               each q_m                                          name)
=============  ============================  ==================  ======================

``build_model(name, dataset, preset=None, **overrides)`` returns a :class:`ModelSpec`: the
Pyro model/guide pair (``spec.vae.model``, ``spec.vae.guide``), its ELBO, and the training
defaults. Settings resolve as: library defaults < preset < explicit overrides.
"""

from __future__ import annotations

from collections.abc import Callable
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

#: Defaults shared by every model; a preset or an override replaces any of them.
DEFAULTS: dict[str, Any] = {
    "latent_dim": 20,
    "posterior": "normal",
    "scale_param": "softplus",
    "beta": 1.0,
    "kl_warmup_epochs": 0,
    "prior_expert": False,
    "num_subsets": 1,
    "subset_sampling": "single",
    "likelihood": "laplace",
    "likelihood_scale": 0.75,
    "nets": "mlp",
    "hidden": (400, 400),
    "num_particles": 1,
    "estimator": "elbo",
    "lr": 1e-3,
    "amsgrad": True,
    "batch_size": 128,
    "epochs": 30,
}

TRAIN_KEYS = ("lr", "amsgrad", "batch_size", "epochs")

#: Per-dataset defaults, applied over DEFAULTS (a preset or override still wins). The offline
#: mini dataset gets a recipe that trains to a useful model in minutes on a laptop CPU.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "polymnist-mini": {"hidden": (256, 256), "batch_size": 64, "epochs": 12,
                       "kl_warmup_epochs": 5},
}

#: Named recipes from the papers (see MODELS.md); ``model`` names the model they are for.
PRESETS: dict[str, dict[str, Any]] = {
    "mopoe_polymnist": {
        # Sutter et al. 2021 PolyMNIST settings as given in MODELS.md: beta 2.5, Laplace
        # likelihood with scale 0.75 (their networks are conv nets; ours the PolyMNIST ResNet).
        "model": "mopoe",
        "nets": "resnet",
        "latent_dim": 512,
        "beta": 2.5,
        "likelihood": "laplace",
        "likelihood_scale": 0.75,
        "lr": 1e-3,
        "amsgrad": False,
        "batch_size": 256,
        "epochs": 300,
    },
    "mmvae_polymnist": {
        "model": "mmvae",
        "nets": "resnet",
        "latent_dim": 32,
        "posterior": "laplace",
        "scale_param": "softmax",
        "likelihood": "laplace",
        "likelihood_scale": 0.75,
        "lr": 1e-3,
        "amsgrad": True,
        "batch_size": 128,
        "epochs": 150,
    },
    "mmvae_plus_polymnist": {
        # Palumbo et al. 2023, PolyMNIST (official run script: ELBO with K = 1, 250 epochs):
        # Dz = Dw = 32, beta 2.5, Laplace posteriors/priors with the softmax scale map,
        # Laplace likelihood with scale 0.75, Adam lr 1e-3 amsgrad, batch 128, ResNets.
        "model": "mmvae_plus",
        "nets": "resnet",
        "latent_dim": 32,
        "private_dim": 32,
        "aux_prior": "learned",
        "posterior": "laplace",
        "scale_param": "softmax",
        "beta": 2.5,
        "likelihood": "laplace",
        "likelihood_scale": 0.75,
        "num_particles": 1,
        "estimator": "elbo",
        "lr": 1e-3,
        "amsgrad": True,
        "batch_size": 128,
        "epochs": 250,
    },
    "jmvae_polymnist": {
        # JMVAE-KL (MODELS.md: alpha ~ 0.1) with the PolyMNIST settings of MultiVae's model
        # comparison (latent 512, Laplace likelihood scale 0.75, lr 1e-3, batch 256, warm-up
        # of the KL terms over 200 epochs, 800 epochs); ResNet networks.
        "model": "jmvae",
        "nets": "resnet",
        "latent_dim": 512,
        "alpha": 0.1,
        "beta": 1.0,
        "kl_warmup_epochs": 200,
        "likelihood": "laplace",
        "likelihood_scale": 0.75,
        "lr": 1e-3,
        "amsgrad": False,
        "batch_size": 256,
        "epochs": 800,
    },
    "telbo_polymnist": {
        # TELBO under the same PolyMNIST settings; two stages of half the epochs each.
        "model": "telbo",
        "nets": "resnet",
        "latent_dim": 512,
        "beta": 1.0,
        "likelihood": "laplace",
        "likelihood_scale": 0.75,
        "lr": 1e-3,
        "amsgrad": False,
        "batch_size": 256,
        "epochs": 800,
    },
    "mvtcae_polymnist": {
        # Hwang et al. 2021 PolyMNIST (MultiVae's reproduction script): alpha 5/6, beta 2.5,
        # latent 512, Laplace likelihood scale 0.75, lr 1e-3, batch 256, 300 epochs.
        "model": "mvtcae",
        "nets": "resnet",
        "latent_dim": 512,
        "alpha": 5 / 6,
        "beta": 2.5,
        "likelihood": "laplace",
        "likelihood_scale": 0.75,
        "lr": 1e-3,
        "amsgrad": False,
        "batch_size": 256,
        "epochs": 300,
    },
    "crmvae_translated_polymnist": {
        # MODELS.md objective 8, Translated-PolyMNIST recipe: latent 512, Laplace likelihood
        # scale 0.75, beta 0.1 (applied to the un-halved objective; MultiVae's halved
        # reconstruction sum at beta' corresponds to beta = 2 beta'), Adam lr 5e-4, batch
        # 256, 500 epochs.
        "model": "crmvae",
        "nets": "resnet",
        "latent_dim": 512,
        "beta": 0.1,
        "likelihood": "laplace",
        "likelihood_scale": 0.75,
        "lr": 5e-4,
        "amsgrad": False,
        "batch_size": 256,
        "epochs": 500,
    },
    "mmvae_private_polymnist": {
        # The private-latent MMVAE baseline under the same recipe as mmvae_plus_polymnist.
        "model": "mmvae_private",
        "nets": "resnet",
        "latent_dim": 32,
        "private_dim": 32,
        "aux_prior": "posterior",
        "posterior": "laplace",
        "scale_param": "softmax",
        "beta": 2.5,
        "likelihood": "laplace",
        "likelihood_scale": 0.75,
        "num_particles": 1,
        "estimator": "elbo",
        "lr": 1e-3,
        "amsgrad": True,
        "batch_size": 128,
        "epochs": 250,
    },
}


@dataclass
class ModelSpec:
    """A built model: the Pyro model/guide pair, its objective and training defaults."""

    name: str
    vae: MultimodalVAE
    elbo: ELBO
    train_defaults: dict[str, Any]
    preset: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def _is_image(shape: torch.Size) -> bool:
    return len(shape) == 3 and shape[0] in (1, 3)


def build_networks(nets: str, event_shape: torch.Size, param_shape: torch.Size,
                   latent_dim: int, hidden=(400, 400)) -> tuple[nn.Module, nn.Module]:
    """An (encoder, decoder) pair: ``"mlp"`` for any shape, ``"resnet"`` for 3x28x28 images."""
    from pyro_mmvae.nets.mlp import MLPDecoder, MLPEncoder
    from pyro_mmvae.nets.polymnist import PolyMNISTResNetDecoder, PolyMNISTResNetEncoder

    if nets == "mlp":
        image = _is_image(event_shape)
        activation = "sigmoid" if image and param_shape == event_shape else None
        centre = {"input_offset": 0.5, "input_scale": 0.5} if image else {}
        return (MLPEncoder(event_shape, latent_dim, hidden=hidden, **centre),
                MLPDecoder(latent_dim, param_shape, hidden=hidden, output_activation=activation))
    if nets == "resnet":
        if tuple(event_shape) != (3, 28, 28) or param_shape != event_shape:
            raise ValueError(f"the PolyMNIST ResNet needs 3x28x28 images with a per-pixel "
                             f"likelihood, got event shape {tuple(event_shape)}")
        return PolyMNISTResNetEncoder(latent_dim), PolyMNISTResNetDecoder(latent_dim)
    raise ValueError(f"unknown network family {nets!r}; choose 'mlp' or 'resnet'")


def build_modalities(dataset, settings: dict[str, Any]) -> list[Modality]:
    """One :class:`Modality` per modality of ``dataset`` with the chosen networks/likelihood."""
    from pyro_mmvae.likelihoods import get_likelihood

    modalities = []
    for name in dataset.modalities:
        shape = torch.Size(dataset.event_shapes[name])
        kind = settings["likelihood"]
        likelihood = (get_likelihood(kind, scale=settings["likelihood_scale"])
                      if kind in ("laplace", "normal") else get_likelihood(kind))
        encoder, decoder = build_networks(settings["nets"], shape,
                                          likelihood.param_shape(shape),
                                          settings["latent_dim"], tuple(settings["hidden"]))
        modalities.append(Modality(name, shape, likelihood, encoder, decoder))
    return modalities


def _build_mmvae(dataset, s: dict[str, Any]) -> tuple[MultimodalVAE, ELBO]:
    vae = MMVAE(build_modalities(dataset, s), s["latent_dim"], **_common(s))
    return vae, MixtureELBO(num_particles=s["num_particles"], estimator=s["estimator"])


def _common(s: dict[str, Any]) -> dict[str, Any]:
    return {"posterior": s["posterior"], "scale_param": s["scale_param"], "beta": s["beta"],
            "kl_warmup_epochs": s["kl_warmup_epochs"]}


def _build_mvae(dataset, s: dict[str, Any]) -> tuple[MultimodalVAE, ELBO]:
    mods = build_modalities(dataset, s)
    vae = MVAE(mods, s["latent_dim"], prior_expert=s["prior_expert"], **_common(s))
    elbo = SubsampledELBO(len(mods), num_subsets=s["num_subsets"],
                          num_particles=s["num_particles"], estimator=s["estimator"])
    return vae, elbo


def _build_mopoe(dataset, s: dict[str, Any]) -> tuple[MultimodalVAE, ELBO]:
    vae = MoPoE(build_modalities(dataset, s), s["latent_dim"], sampling=s["subset_sampling"],
                prior_expert=s["prior_expert"], **_common(s))
    return vae, MoPoEELBO(num_particles=s["num_particles"], estimator=s["estimator"])


def build_private_modalities(dataset, settings: dict[str, Any]) -> list[Modality]:
    """Modalities for shared + private latents: decoders read ``[z, w_m]`` (Dz + Dw inputs);
    MLP encoders output Dz + Dw (split by the model), the ResNet gets a private tower."""
    from pyro_mmvae.nets.polymnist import PolyMNISTResNetEncoder

    dz, dw = settings["latent_dim"], settings["private_dim"]
    modalities = build_modalities(dataset, {**settings, "latent_dim": dz + dw})
    if settings["nets"] == "resnet":
        for mod in modalities:
            mod.encoder = PolyMNISTResNetEncoder(dz, dw)
    return modalities


def _build_mmvae_plus(dataset, s: dict[str, Any]) -> tuple[MultimodalVAE, ELBO]:
    vae = MMVAEPlus(build_private_modalities(dataset, s), s["latent_dim"], s["private_dim"],
                    aux_prior=s["aux_prior"], **_common(s))
    return vae, MMVAEPlusELBO(num_particles=s["num_particles"], estimator=s["estimator"])


def build_joint_encoder(dataset, s: dict[str, Any]) -> nn.Module:
    """The default joint encoder (:class:`~pyro_mmvae.nets.JointEncoder`): for each modality a
    fresh encoder of the unimodal architecture with ``joint_features`` outputs per head, then
    one hidden layer of width ``hidden[-1]``."""
    from pyro_mmvae.nets.joint import JointEncoder

    encoders = {}
    for name in dataset.modalities:
        shape = torch.Size(dataset.event_shapes[name])
        encoders[name] = build_networks(s["nets"], shape, shape, s["joint_features"],
                                        tuple(s["hidden"]))[0]
    return JointEncoder.from_encoders(encoders, s["joint_features"], s["latent_dim"],
                                      hidden=(tuple(s["hidden"])[-1],))


def _coordination_vae(dataset, s: dict[str, Any], joint: str) -> CoordinationVAE:
    return CoordinationVAE(
        build_modalities(dataset, s), s["latent_dim"], joint=joint,
        joint_encoder=build_joint_encoder(dataset, s) if joint == "encoder" else None,
        unimodal_targets=s["unimodal_targets"], decoder_stop_gradient=s["decoder_stop_gradient"],
        prior_expert=s["prior_expert"], **_common(s))


def _build_jmvae(dataset, s: dict[str, Any]) -> tuple[MultimodalVAE, ELBO]:
    elbo = JMVAEELBO(alpha=s["alpha"], num_particles=s["num_particles"],
                     estimator=s["estimator"])
    return _coordination_vae(dataset, s, "encoder"), elbo


def _build_telbo(dataset, s: dict[str, Any]) -> tuple[MultimodalVAE, ELBO]:
    elbo = TELBOELBO(num_particles=s["num_particles"], estimator=s["estimator"])
    return _coordination_vae(dataset, s, "encoder"), elbo


def _build_mvtcae(dataset, s: dict[str, Any]) -> tuple[MultimodalVAE, ELBO]:
    elbo = MVTCAEELBO(alpha=s["alpha"], num_particles=s["num_particles"],
                      estimator=s["estimator"])
    return _coordination_vae(dataset, s, "poe"), elbo


def _build_crmvae(dataset, s: dict[str, Any]) -> tuple[MultimodalVAE, ELBO]:
    elbo = CRMVAEELBO(num_particles=s["num_particles"], estimator=s["estimator"])
    return _coordination_vae(dataset, s, "poe"), elbo


#: TELBO's two training stages (Vedantam et al. 2018): first the joint encoder and the
#: decoders (unimodal encoders frozen), then the unimodal encoders (the rest frozen). Its
#: unimodal reconstructions never train the decoders (``decoder_stop_gradient``), so the first
#: stage optimises the joint ELBO alone. See :mod:`pyro_mmvae.stages`.
TELBO_STAGES = ((0.5, ("mods.*.encoder",)), (None, ("joint_encoder", "mods.*.decoder")))

#: Settings of the coordination family (JMVAE-KL, TELBO, MVTCAE, CRMVAE).
_COORDINATION = {"prior_expert": False, "unimodal_targets": "none",
                 "decoder_stop_gradient": False}

BUILDERS: dict[str, Callable[[Any, dict[str, Any]], tuple[MultimodalVAE, ELBO]]] = {
    "mmvae": _build_mmvae,
    "mvae": _build_mvae,
    "mopoe": _build_mopoe,
    "mmvae_plus": _build_mmvae_plus,
    "mmvae_private": _build_mmvae_plus,
    "jmvae": _build_jmvae,
    "telbo": _build_telbo,
    "mvtcae": _build_mvtcae,
    "crmvae": _build_crmvae,
}
#: Settings that only some models read; a preset or override may set them for any model.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mvae": {"prior_expert": True},
    "mopoe": {"prior_expert": False},
    "mmvae_plus": {"private_dim": 20, "aux_prior": "learned"},
    "mmvae_private": {"private_dim": 20, "aux_prior": "posterior"},
    "jmvae": {**_COORDINATION, "alpha": 0.1, "joint_features": 64},
    "telbo": {**_COORDINATION, "joint_features": 64, "unimodal_targets": "own",
              "decoder_stop_gradient": True, "stages": TELBO_STAGES},
    "mvtcae": {**_COORDINATION, "alpha": 5 / 6},
    "crmvae": {**_COORDINATION, "unimodal_targets": "own"},
}
MODELS: tuple[str, ...] = tuple(BUILDERS)

#: Defaults of one model on one dataset, over MODEL_DEFAULTS. On polymnist-mini the models
#: whose objective has no cross-modal reconstruction (MVAE's joint and unimodal ELBOs, the
#: joint-encoder models) spend a 20-d latent at beta = 1 on the backgrounds and leave the
#: digit out within 12 epochs (measured coherence: MVAE 0.265, JMVAE 0.297, TELBO 0.26);
#: a weaker KL weight (and for MVAE and TELBO more epochs) lets them encode it (0.64, 0.57,
#: 0.52). See the README's table of default runs.
DATASET_MODEL_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("polymnist-mini", "jmvae"): {"beta": 0.1},
    ("polymnist-mini", "mvae"): {"beta": 0.1, "epochs": 20},
    # TELBO trains the joint encoder only in its first stage: give it 12 of 16 epochs.
    ("polymnist-mini", "telbo"): {"beta": 0.1, "epochs": 16,
                                  "stages": ((0.75, ("mods.*.encoder",)),
                                             (None, ("joint_encoder", "mods.*.decoder")))},
}


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
    """
    global MODELS
    if not str(name).replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"model name {name!r} must be letters, digits, '_' or '-'")
    if name in BUILDERS and not replace:
        raise ValueError(f"model {name!r} is already in the zoo; pass replace=True to "
                         "replace it")
    BUILDERS[name] = builder
    MODEL_DEFAULTS[name] = dict(defaults or {})
    MODELS = tuple(BUILDERS)


def model_names() -> tuple[str, ...]:
    """Every model of the zoo, those added with :func:`register_model` included."""
    return tuple(BUILDERS)


def resolve_settings(name: str, preset: str | None = None, dataset_name: str | None = None,
                     **overrides) -> dict[str, Any]:
    """Library, dataset and model defaults, then the preset, then the overrides.

    ``None`` values among the overrides are ignored.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    settings = dict(DEFAULTS)
    settings.update(DATASET_DEFAULTS.get(dataset_name, {}))
    settings.update(MODEL_DEFAULTS.get(name, {}))
    settings.update(DATASET_MODEL_DEFAULTS.get((dataset_name, name), {}))
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        recipe = dict(PRESETS[preset])
        if recipe.pop("model") != name:
            raise ValueError(f"preset {preset!r} is for model {PRESETS[preset]['model']!r}, "
                             f"not {name!r}")
        settings.update(recipe)
    unknown = set(overrides) - set(settings)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(settings)}")
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def build_model(name: str, dataset, preset: str | None = None, **overrides) -> ModelSpec:
    """Build model ``name`` for ``dataset`` (anything with ``.modalities``/``.event_shapes``)."""
    settings = resolve_settings(name, preset, getattr(dataset, "name", None), **overrides)
    vae, elbo = BUILDERS[name](dataset, settings)
    train_defaults = {k: settings[k] for k in TRAIN_KEYS}
    if settings.get("stages"):  # training stages (TELBO), see pyro_mmvae.stages
        train_defaults["stages"] = settings["stages"]
    return ModelSpec(name, vae, elbo, train_defaults, preset, settings)
