"""Named recipes and dataset defaults: partial overrides of :mod:`pyro_mmvae.settings`.

A preset names the model it is for and lists only what differs from the defaults
(``pyro_mmvae.settings.DEFAULTS``: Laplace likelihood with scale 0.75, Adam with
lr 1e-3, ...). ``pyro-mmvae train --model M --preset P`` resolves, in order: library
defaults < dataset defaults < model defaults < model-on-dataset defaults < preset <
``--set`` options (:func:`pyro_mmvae.zoo.resolve_settings`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DATASET_DEFAULTS",
    "DATASET_MODEL_DEFAULTS",
    "PRESETS",
    "JNF_DCCA_STAGES",
    "JNF_STAGES",
    "TELBO_STAGES",
    "preset_settings",
]

#: TELBO's two training stages (Vedantam et al. 2018): first the joint encoder and the
#: decoders (unimodal encoders frozen), then the unimodal encoders (the rest frozen). Its
#: unimodal reconstructions never train the decoders (``decoder_stop_gradient``), so the
#: first stage optimises the joint ELBO alone. See :mod:`pyro_mmvae.stages`. With missing
#: modalities the joint ELBO of an incomplete row comes from the joint encoder on the observed
#: subset (``incomplete_joint="encoder"``), so the first stage trains on every row.
TELBO_STAGES = ((0.5, ("mods.*.encoder",)), (None, ("joint_encoder", "mods.*.decoder")))

#: JNF's two stages (Senellart et al. 2023): the joint VAE (unimodal encoders and their flows
#: frozen), then the unimodal encoders and flows (joint encoder and decoders frozen).
JNF_STAGES = ((0.5, ("mods.*.encoder", "flows")), (None, ("joint_encoder", "mods.*.decoder")))
#: JNF-DCCA's three stages: the DCCA embeddings alone, the joint VAE, then the unimodal heads
#: and flows (the embeddings stay frozen after their stage).
JNF_DCCA_STAGES = (
    (0.25, ("joint_encoder", "mods.*.decoder", "mods.*.encoder.head", "flows")),
    (0.5, ("mods.*.encoder", "flows")),
    (None, ("joint_encoder", "mods.*.decoder", "mods.*.encoder.embed")))

#: Per-dataset defaults. The offline mini dataset gets a recipe that trains to a useful
#: model in minutes on a laptop CPU.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "polymnist-mini": {"hidden": (256, 256), "batch_size": 64, "epochs": 12,
                       "kl_warmup_epochs": 5},
    # a sharper image likelihood (Laplace scale 0.1) makes the digit worth encoding early
    "captions-mini": {"hidden": (256, 256), "batch_size": 32, "epochs": 10,
                      "likelihood_scale": 0.1},
}

#: Defaults of one model on one dataset. On polymnist-mini the models whose objective has
#: no cross-modal reconstruction (MVAE's joint and unimodal ELBOs, the joint-encoder models)
#: spend a 20-d latent at beta = 1 on the backgrounds and leave the digit out within 12
#: epochs (measured coherence: MVAE 0.265, JMVAE 0.297, TELBO 0.26); a weaker KL weight (and
#: for MVAE and TELBO more epochs) lets them encode it (0.64, 0.57, 0.52). See the README.
DATASET_MODEL_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    # JMVAE at beta 0.1 and 12 epochs: 0.43 / 0.517 (seeds 0 / 1); 16 epochs: 0.521 (seed 0).
    ("polymnist-mini", "jmvae"): {"beta": 0.1, "epochs": 16},
    ("polymnist-mini", "mvae"): {"beta": 0.1, "epochs": 20},
    # DMVAE: with the default 20-d private latents at beta 1 the private latents absorb the
    # digit (coherence 0.111); beta 0.1 0.220; beta 0.1 with 4-d private latents 0.624.
    ("polymnist-mini", "dmvae"): {"beta": 0.1, "private_dim": 4},
    # TELBO trains the joint encoder only in its first stage: give it 12 of 16 epochs.
    ("polymnist-mini", "telbo"): {"beta": 0.1, "epochs": 16,
                                  "stages": ((0.75, ("mods.*.encoder",)),
                                             (None, ("joint_encoder", "mods.*.decoder")))},
    # MHVAE and Nexus: at beta = 1 their modality latents leave the digit out (coherence
    # 0.198 and 0.287 after 12 epochs, seed 0); with the modality-level KL weight 0.1 (and
    # MHVAE's top-level one too) 0.422 and 0.424 (0.05: 0.425, 0.404); 16 epochs: 0.471, 0.499.
    ("polymnist-mini", "mhvae"): {"beta": 0.1, "hier_top_beta": 0.1, "epochs": 16},
    ("polymnist-mini", "nexus"): {"beta": 0.1, "epochs": 16},
    # JNF: as TELBO, the joint VAE in 12 of 16 epochs, then the flows.
    ("polymnist-mini", "jnf"): {"beta": 0.1, "epochs": 16,
                                "stages": ((0.75, ("mods.*.encoder", "flows")),
                                           (None, ("joint_encoder", "mods.*.decoder")))},
    # JNF-DCCA: 4 epochs of DCCA, 12 of the joint VAE, 4 of the unimodal heads and flows.
    ("polymnist-mini", "jnf_dcca"): {
        "beta": 0.1, "epochs": 20,
        "stages": ((0.2, ("joint_encoder", "mods.*.decoder", "mods.*.encoder.head", "flows")),
                   (0.6, ("mods.*.encoder", "flows")),
                   (None, ("joint_encoder", "mods.*.decoder", "mods.*.encoder.embed")))},
}

#: The PolyMNIST ResNets (Laplace likelihood with scale 0.75 is the library default).
_RESNET = {"nets": "resnet"}
#: MMVAE / MMVAE+ (Palumbo et al. 2023): Laplace posteriors and priors with the softmax scale
#: map, Adam with amsgrad, batch 128.
_MMVAE_FAMILY = {**_RESNET, "latent_dim": 32, "posterior": "laplace", "scale_param": "softmax",
                 "batch_size": 128}
#: The settings of MultiVae's PolyMNIST model comparison: latent 512, Adam without amsgrad,
#: batch 256.
_MULTIVAE_POLYMNIST = {**_RESNET, "latent_dim": 512, "amsgrad": False, "batch_size": 256}

#: Named recipes from the papers (see MODELS.md); ``model`` names the model they are for.
PRESETS: dict[str, dict[str, Any]] = {
    # Sutter et al. 2021, PolyMNIST: beta 2.5 (their networks are conv nets; ours the ResNet).
    "mopoe_polymnist": {"model": "mopoe", **_MULTIVAE_POLYMNIST, "beta": 2.5, "epochs": 300},
    "mmvae_polymnist": {"model": "mmvae", **_MMVAE_FAMILY, "epochs": 150},
    # Palumbo et al. 2023, PolyMNIST (official run script: ELBO with K = 1, 250 epochs):
    # Dz = Dw = 32, beta 2.5, learned auxiliary priors.
    "mmvae_plus_polymnist": {"model": "mmvae_plus", **_MMVAE_FAMILY, "private_dim": 32,
                             "aux_prior": "learned", "beta": 2.5, "epochs": 250},
    # The private-latent MMVAE baseline under the same recipe.
    "mmvae_private_polymnist": {"model": "mmvae_private", **_MMVAE_FAMILY, "private_dim": 32,
                                "aux_prior": "posterior", "beta": 2.5, "epochs": 250},
    # CMVAE (Palumbo et al. 2024), PolyMNIST: MMVAE+'s recipe (Dz = Dw = 32, beta 2.5,
    # learned auxiliary priors, 250 epochs) with C = 10 clusters and the DReG objective with
    # K = 10 (MultiVae's CMVAE defaults; the paper's over-specified C with post-hoc cluster
    # selection is not reproduced).
    "cmvae_polymnist": {"model": "cmvae", **_MMVAE_FAMILY, "private_dim": 32,
                        "aux_prior": "learned", "beta": 2.5, "epochs": 250,
                        "cmvae_clusters": 10, "estimator": "dreg", "num_particles": 10},
    # JMVAE-KL (MODELS.md: alpha ~ 0.1), KL terms warmed up over 200 of 800 epochs.
    "jmvae_polymnist": {"model": "jmvae", **_MULTIVAE_POLYMNIST, "alpha": 0.1,
                        "kl_warmup_epochs": 200, "epochs": 800},
    # TELBO under the same settings; two stages of half the epochs each.
    "telbo_polymnist": {"model": "telbo", **_MULTIVAE_POLYMNIST, "epochs": 800},
    # JNF (Senellart et al. 2023) under MultiVae's PolyMNIST settings, two stages of half the
    # epochs each (MultiVae's warmup), two MAF layers per modality.
    "jnf_polymnist": {"model": "jnf", **_MULTIVAE_POLYMNIST, "epochs": 800},
    "jnf_dcca_polymnist": {"model": "jnf_dcca", **_MULTIVAE_POLYMNIST, "epochs": 800},
    # Hwang et al. 2021 (MultiVae's reproduction script): alpha 5/6, beta 2.5, 300 epochs.
    "mvtcae_polymnist": {"model": "mvtcae", **_MULTIVAE_POLYMNIST, "alpha": 5 / 6,
                         "beta": 2.5, "epochs": 300},
    # DMVAE (Lee & Pavlovic 2021) and the conditional VAE: their papers have no PolyMNIST
    # recipe; MultiVae's PolyMNIST settings, DMVAE with 32-d private latents, 300 epochs (our
    # choice). The CVAE generates m1 from m0 (settings cvae_source, cvae_target).
    "dmvae_polymnist": {"model": "dmvae", **_MULTIVAE_POLYMNIST, "private_dim": 32,
                        "epochs": 300},
    "cvae_polymnist": {"model": "cvae", **_MULTIVAE_POLYMNIST, "epochs": 300},
    # MHVAE and Nexus (Vasco et al.): the papers have no PolyMNIST recipe. MultiVae's
    # PolyMNIST settings with the 512-d latent as each modality latent z_m (what the
    # decoders read), a 64-d top latent, modality dropout 0.5 (our choice), 300 epochs.
    "mhvae_polymnist": {"model": "mhvae", **_MULTIVAE_POLYMNIST, "hier_modality_dim": 512,
                        "latent_dim": 64, "hier_modality_dropout": 0.5, "epochs": 300},
    "nexus_polymnist": {"model": "nexus", **_MULTIVAE_POLYMNIST, "hier_modality_dim": 512,
                        "latent_dim": 64, "hier_modality_dropout": 0.5, "epochs": 300},
    # MODELS.md objective 8, Translated PolyMNIST: beta 0.1 (on the un-halved objective;
    # MultiVae's halved reconstruction sum at beta' is beta = 2 beta'), lr 5e-4, 500 epochs.
    "crmvae_translated_polymnist": {"model": "crmvae", **_MULTIVAE_POLYMNIST, "beta": 0.1,
                                    "lr": 5e-4, "epochs": 500},
}

#: The CPU reproduction protocol (``benchmarks/reproduce.py``): every model with its paper
#: settings, but the library's MLP networks (two hidden layers of 400), batch 128 and one
#: epoch budget for all, sized so that the costliest model (MMVAE+, 25 decoder calls per
#: tuple) fits in 2 hours of a 2-core CPU on all 60,000 PolyMNIST tuples. The MLPs were
#: chosen over the conv nets (:mod:`pyro_mmvae.nets.conv`) by measurement: a conv MMVAE+ ran
#: 1.5-2.6 s a step and stayed at chance coherence for 3 epochs (1,407 steps, an hour); the
#: MLP step is ~3x cheaper and a unimodal MLP VAE puts the digit into its latent within 100
#: steps where the conv one has not after 600 (``benchmarks/digit_probe.py``, README).
#: The KL terms are warmed up over the first quarter of the run, as in JMVAE's full recipe
#: (200 of 800 epochs): without it MMVAE and MMVAE+ on the MLPs stayed at chance (coherence
#: 0.087-0.105, a near-constant generated image) for their first 450-600 steps, with the
#: papers' Laplace posteriors or with Normal ones.
_CPU = {"nets": "mlp", "batch_size": 128, "epochs": 20, "kl_warmup_epochs": 5}
PRESETS.update({
    "mmvae_plus_polymnist_cpu": {**PRESETS["mmvae_plus_polymnist"], **_CPU},
    "mmvae_private_polymnist_cpu": {**PRESETS["mmvae_private_polymnist"], **_CPU},
    "mmvae_polymnist_cpu": {**PRESETS["mmvae_polymnist"], **_CPU},
    "mopoe_polymnist_cpu": {**PRESETS["mopoe_polymnist"], **_CPU},
    "mvtcae_polymnist_cpu": {**PRESETS["mvtcae_polymnist"], **_CPU},
    # CRMVAE's Translated-PolyMNIST recipe, used on both datasets.
    "crmvae_polymnist_cpu": {**PRESETS["crmvae_translated_polymnist"], **_CPU},
    "jmvae_polymnist_cpu": {**PRESETS["jmvae_polymnist"], **_CPU},
})


def preset_settings(preset: str, model: str) -> dict[str, Any]:
    """The overrides of ``preset`` (without its ``model``), which must be a recipe for
    ``model``.

    Args:
        preset: a name of :data:`PRESETS` (``--preset``), e.g. ``"mmvae_plus_polymnist"``.
        model: the model of the run (``--model``); must be the preset's ``model``.

    Returns:
        A new dict of setting name -> value.

    Raises:
        ValueError: for an unknown preset, or one for another model.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (--preset); choose one of: "
                         f"{', '.join(PRESETS)}")
    recipe = dict(PRESETS[preset])
    if recipe.pop("model") != model:
        raise ValueError(f"preset {preset!r} (--preset) is for model "
                         f"{PRESETS[preset]['model']!r}, not {model!r} (--model)")
    return recipe
