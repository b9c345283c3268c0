"""Typed settings of a model and its training, resolved once.

A model of the zoo is built from five small groups of settings:

==============  =====================================================================
group           settings
==============  =====================================================================
``latent``      ``latent_dim``, ``private_dim``, ``posterior``, ``scale_param``,
                ``beta``, ``kl_warmup_epochs``, ``prior_expert``, ``num_subsets``,
                ``subset_sampling``, ``aux_prior``, ``alpha``, ``unimodal_targets``,
                ``decoder_stop_gradient``, ``incomplete_joint``, ``dmvae_private_beta``,
                ``cvae_source``, ``cvae_target``, ``cvae_prior``, ``cmvae_clusters``,
                ``hier_modality_dim``, ``hier_top_beta``, ``hier_modality_dropout``,
                ``nexus_message_dim``, ``nexus_gamma``
``networks``    ``nets``, ``hidden``, ``joint_features``
``likelihood``  ``likelihood``, ``likelihood_scale``, ``modalities``
``objective``   ``num_particles``, ``estimator``
``optim``       ``lr``, ``amsgrad``, ``batch_size``, ``epochs``, ``stages``
==============  =====================================================================

Every setting has one name, the same everywhere: ``build_model(..., beta=2.5)``,
``TrainConfig(settings={"beta": 2.5})``, ``pyro-mmvae train --set beta=2.5``, presets and
checkpoints. :func:`make_settings` checks every value once (type, range, choices) and says
which setting is wrong and why. :class:`Settings` is read by group (``s.latent.beta``) or by
name (``s["beta"]``).

``modalities`` overrides the choice per modality: ``{"caption": {"likelihood":
"categorical", "vocab_size": 30}, "image": {"nets": "mlp", "likelihood_scale": 0.5}}``,
or one entry at a time, ``--set modalities.caption.likelihood=categorical``; the keys are
:data:`MODALITY_KEYS`, each checked as the global setting of that name. Without an override
a modality's kind (image, vector, tokens) chooses (:func:`pyro_mmvae.zoo.build_modalities`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyro_mmvae.distributions.experts import FAMILIES
from pyro_mmvae.distributions.scales import SCALE_PARAMETERISATIONS
from pyro_mmvae.infer.base import ESTIMATORS
from pyro_mmvae.likelihoods import LIKELIHOODS


def _spec(kind: str, **meta: Any) -> dict[str, Any]:
    return {"kind": kind, **meta}


@dataclass(frozen=True)
class LatentSettings:
    """The latent variables and their prior-ratio (KL) weights."""

    #: Size Dz of the shared latent z (int > 0).
    latent_dim: int = field(default=20, metadata=_spec("positive_int"))
    #: Size Dw of each private latent w_m (MMVAE+ and its baseline; int > 0).
    private_dim: int = field(default=20, metadata=_spec("positive_int"))
    #: Family of the unimodal posteriors q_m(z|x_m) (and of MMVAE+'s priors):
    #: ``"normal"`` or ``"laplace"``.
    posterior: str = field(default="normal", metadata=_spec("choice", choices=FAMILIES))
    #: How an encoder's raw output v becomes a scale: ``"softplus"`` (softplus(v) + 1e-6) or
    #: ``"softmax"`` (softmax(v)·D + 1e-6, as in the official MMVAE/MMVAE+ code).
    scale_param: str = field(default="softplus",
                             metadata=_spec("choice", choices=tuple(SCALE_PARAMETERISATIONS)))
    #: Weight β of the KL (prior-ratio) terms (float > 0).
    beta: float = field(default=1.0, metadata=_spec("positive_float"))
    #: Epochs over which β (and JMVAE's α) rises linearly from 0; 0: no warm-up.
    kl_warmup_epochs: int = field(default=0, metadata=_spec("non_negative_int"))
    #: Include the prior p(z) as an expert of the products of experts (MVAE, MoPoE).
    prior_expert: bool = field(default=False, metadata=_spec("bool"))
    #: MVAE: number k of random subsets whose ELBOs are added each step (int > 0).
    num_subsets: int = field(default=1, metadata=_spec("positive_int"))
    #: MoPoE: one subset per data point (``"single"``) or one stratum per subset
    #: (``"stratified"``: lower variance, more compute).
    subset_sampling: str = field(default="single",
                                 metadata=_spec("choice", choices=("single", "stratified")))
    #: MMVAE+: where the cross-modal w̃_d comes from: a learned-scale (``"learned"``) or
    #: ``"fixed"`` auxiliary prior, or the target's own posterior (``"posterior"``).
    aux_prior: str = field(default="learned",
                           metadata=_spec("choice", choices=("learned", "fixed", "posterior")))
    #: MMVAE+ and its baseline with MLP networks: one encoder trunk with z and w heads
    #: (``"shared"``) or separate encoders for z and w (``"separate"``, as the official code;
    #: the ResNet and conv networks always have a private tower).
    private_encoder: str = field(default="shared",
                                 metadata=_spec("choice", choices=("shared", "separate")))
    #: CMVAE: number C of clusters of the mixture prior p(c) p(z|c) (int > 0).
    cmvae_clusters: int = field(default=10, metadata=_spec("positive_int"))
    #: Weight α in [0, 1] of the coordination terms KL(q(z|X) ‖ q_m) (JMVAE, MVTCAE).
    alpha: float = field(default=0.1, metadata=_spec("unit_float"))
    #: Coordination models: which modalities each q_m reconstructs: ``"none"``, its own
    #: (``"own"``) or every modality (``"all"``).
    unimodal_targets: str = field(default="none",
                                  metadata=_spec("choice", choices=("none", "own", "all")))
    #: Coordination models: keep the unimodal-reconstruction gradients out of the decoders.
    decoder_stop_gradient: bool = field(default=False, metadata=_spec("bool"))
    #: Coordination models: the joint posterior of a row with a missing modality: product of
    #: the present experts (``"poe"``) or the joint encoder (``"encoder"``).
    incomplete_joint: str = field(default="poe",
                                  metadata=_spec("choice", choices=("poe", "encoder")))
    #: MHVAE, Nexus: size D_m of each modality latent z_m (the top latent's is latent_dim).
    hier_modality_dim: int = field(default=20, metadata=_spec("positive_int"))
    #: MHVAE, Nexus: weight β_c of the top-level KL term (float > 0; β weighs the z_m ones).
    hier_top_beta: float = field(default=1.0, metadata=_spec("positive_float"))
    #: MHVAE, Nexus: probability in [0, 1] that a training row keeps only a random subset of
    #: its modalities in the top-level posterior (modality / forced perceptual dropout).
    hier_modality_dropout: float = field(default=0.0, metadata=_spec("unit_float"))
    #: Nexus: size of each modality's message to the nexus (int > 0).
    nexus_message_dim: int = field(default=32, metadata=_spec("positive_int"))
    #: Nexus: weight γ of the nexus reconstructions of the modality latents (float > 0).
    nexus_gamma: float = field(default=1.0, metadata=_spec("positive_float"))
    #: DMVAE: weight β_w of the private KL terms KL(q_m(w_m|x_m) ‖ p(w_m)) (float > 0).
    dmvae_private_beta: float = field(default=1.0, metadata=_spec("positive_float"))
    #: Conditional VAE: the conditioning modality x_s (a modality name; ``""``: the
    #: dataset's first modality).
    cvae_source: str = field(default="", metadata=_spec("str"))
    #: Conditional VAE: the generated modality x_t (a modality name; ``""``: the first
    #: modality other than the source).
    cvae_target: str = field(default="", metadata=_spec("str"))
    #: Conditional VAE: the prior of z, learned ``"conditional"`` p(z|x_s) (Sohn et al.) or
    #: ``"standard"`` N(0, I) (MultiVae's default, without a prior network).
    cvae_prior: str = field(default="conditional",
                            metadata=_spec("choice", choices=("conditional", "standard")))


@dataclass(frozen=True)
class NetworkSettings:
    """Encoders and decoders: ``mlp`` (any shape), ``resnet`` or ``conv`` (3x28x28
    PolyMNIST; :mod:`pyro_mmvae.nets.polymnist`, :mod:`pyro_mmvae.nets.conv`)."""

    #: Encoder/decoder architecture: ``"mlp"`` (any shape), ``"resnet"`` (PolyMNIST ResNet)
    #: or ``"conv"`` (small convolutional net; both for 3x28x28 images).
    nets: str = field(default="mlp",
                      metadata=_spec("choice", choices=("mlp", "resnet", "conv")))
    #: Widths of the MLP hidden layers, e.g. ``(256,)`` or ``(400, 400)``.
    hidden: tuple[int, ...] = field(default=(400, 400), metadata=_spec("int_tuple"))
    #: Features per modality head of the joint encoder (JMVAE, TELBO; int > 0).
    joint_features: int = field(default=64, metadata=_spec("positive_int"))
    #: JNF: masked autoregressive flow layers per unimodal posterior (int >= 0; 0: Gaussian).
    jnf_flows: int = field(default=2, metadata=_spec("non_negative_int"))
    #: JNF: hidden widths of each flow layer's autoregressive network, e.g. ``(128, 128)``.
    jnf_flow_hidden: tuple[int, ...] = field(default=(128, 128), metadata=_spec("int_tuple"))
    #: JNF-DCCA: size E of each modality's DCCA embedding (int > 0).
    jnf_dcca_dim: int = field(default=20, metadata=_spec("positive_int"))


@dataclass(frozen=True)
class LikelihoodSettings:
    """The observation model :math:`p(x_m|z)` of every modality."""

    #: Observation model p(x_m|z) of every modality: a registered likelihood name such as
    #: ``"laplace"`` (the default), ``"normal"``, ``"bernoulli"`` or ``"categorical"``.
    likelihood: str = field(default="laplace",
                            metadata=_spec("choice", choices=tuple(LIKELIHOODS)))
    #: Scale of the Laplace/Normal likelihoods (float > 0).
    likelihood_scale: float = field(default=0.75, metadata=_spec("positive_float"))
    #: Per-modality overrides ``{name: {key: value}}`` (keys: :data:`MODALITY_KEYS`).
    modalities: Mapping[str, Mapping[str, Any]] = field(default_factory=dict,
                                                        metadata=_spec("modalities"))


@dataclass(frozen=True)
class ObjectiveSettings:
    """K particles and the estimator (ELBO, IWAE, DReG) of the objective."""

    #: K, latent samples per data point (int > 0).
    num_particles: int = field(default=1, metadata=_spec("positive_int"))
    #: ``"elbo"``, ``"iwae"`` or ``"dreg"`` (IWAE and DReG need K > 1; the coordination
    #: objectives use the ELBO).
    estimator: str = field(default="elbo", metadata=_spec("choice", choices=ESTIMATORS))


@dataclass(frozen=True)
class OptimSettings:
    """Adam and the length of training (``stages``: see :mod:`pyro_mmvae.stages`)."""

    #: Adam learning rate (float > 0).
    lr: float = field(default=1e-3, metadata=_spec("positive_float"))
    #: Use the AMSGrad variant of Adam.
    amsgrad: bool = field(default=True, metadata=_spec("bool"))
    #: Data points per optimiser step (int > 0).
    batch_size: int = field(default=128, metadata=_spec("positive_int"))
    #: Passes over the training set (int > 0).
    epochs: int = field(default=30, metadata=_spec("positive_int"))
    #: Parameter groups frozen per stage of training (TELBO; ``--stage``): anything
    #: :func:`pyro_mmvae.stages.as_stages` reads; None: no stages.
    stages: Any = field(default=None, metadata=_spec("any"))


GROUPS: dict[str, type] = {
    "latent": LatentSettings,
    "networks": NetworkSettings,
    "likelihood": LikelihoodSettings,
    "objective": ObjectiveSettings,
    "optim": OptimSettings,
}
#: Setting name -> its group.
GROUP_OF: dict[str, str] = {f.name: group for group, cls in GROUPS.items()
                            for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class Settings(Mapping):
    """All settings of a model and its training, by group; a read-only mapping by name."""

    #: The latent variables and their KL weights.
    latent: LatentSettings = field(default_factory=LatentSettings)
    #: Encoder and decoder architectures.
    networks: NetworkSettings = field(default_factory=NetworkSettings)
    #: The observation models.
    likelihood: LikelihoodSettings = field(default_factory=LikelihoodSettings)
    #: Particles and estimator of the objective.
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    #: Optimiser and length of training.
    optim: OptimSettings = field(default_factory=OptimSettings)
    #: Settings declared by a model added with :func:`pyro_mmvae.zoo.register_model`.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        if name in self.extra:
            return self.extra[name]
        if name not in GROUP_OF:
            raise KeyError(name)
        return getattr(getattr(self, GROUP_OF[name]), name)

    def __iter__(self) -> Iterator[str]:
        return iter((*GROUP_OF, *self.extra))

    def __len__(self) -> int:
        return len(GROUP_OF) + len(self.extra)

    def replace(self, **values: Any) -> Settings:
        """A copy with ``values`` (checked) replacing the settings of those names."""
        return make_settings({**dict(self), **values}, extra=self.extra)


def _fail(name: str, wanted: str, value: Any) -> ValueError:
    return ValueError(f"setting {name} must be {wanted}, got {value!r}")


def _check_extra(name: str, value: Any, default: Any) -> Any:
    """A setting of a registered model: the type of its default, lists as tuples."""
    if isinstance(default, bool) or default is None:
        ok = default is None or isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = type(default)(value) if ok and isinstance(default, float) else value
        ok = ok and (isinstance(default, float) or isinstance(value, int))
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise _fail(name, f"of the type of its default {default!r}", value)
    return value


#: Settings a modality may override (``modalities.<name>.<key>``), and how each is checked.
MODALITY_KEYS: dict[str, str] = {"likelihood": "likelihood", "nets": "nets",
                                 "likelihood_scale": "likelihood_scale",
                                 "vocab_size": "vocab_size"}
MODALITY_NETS = ("mlp", "resnet", "conv", "text")
MODALITIES_PREFIX = "modalities."


def _check_modalities(value: Any) -> dict[str, dict[str, Any]]:
    """The ``modalities`` setting: ``{name: {key: value}}`` with checked keys and values."""
    if not isinstance(value, Mapping):
        raise _fail("modalities", "a mapping {modality: {likelihood|nets|likelihood_scale|"
                    "vocab_size: value}}", value)
    out: dict[str, dict[str, Any]] = {}
    for mod, overrides in value.items():
        if not isinstance(overrides, Mapping):
            raise _fail(f"modalities.{mod}", "a mapping {key: value}", overrides)
        checked = {}
        for key, v in overrides.items():
            full = f"modalities.{mod}.{key}"
            if key not in MODALITY_KEYS:
                raise ValueError(f"unknown setting {full!r}; a modality can override "
                                 f"{', '.join(MODALITY_KEYS)}")
            if key == "nets":
                if v not in MODALITY_NETS:
                    raise _fail(full, f"one of {', '.join(MODALITY_NETS)}", v)
            elif key == "vocab_size":
                if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                    raise _fail(full, "an integer >= 2", v)
            else:
                try:
                    v = check_value(key, v)
                except ValueError as error:
                    raise ValueError(str(error).replace(f"setting {key} ",
                                                        f"setting {full} ")) from None
            checked[str(key)] = v
        out[str(mod)] = checked
    return out


def fold_modality_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with ``"modalities.<name>.<key>"`` entries merged into ``"modalities"``.

    Args:
        values: settings by name, e.g. ``{"beta": 2.0, "modalities.caption.likelihood":
            "categorical"}``; existing ``"modalities"`` entries are kept and extended.

    Raises:
        ValueError: for a dotted key that is not ``modalities.<name>.<key>``.
    """
    out = {k: v for k, v in values.items() if not str(k).startswith(MODALITIES_PREFIX)}
    dotted = {k: v for k, v in values.items() if str(k).startswith(MODALITIES_PREFIX)}
    if not dotted:
        return out
    merged = {m: dict(o) for m, o in (out.get("modalities") or {}).items()} \
        if isinstance(out.get("modalities") or {}, Mapping) else out["modalities"]
    for key, v in dotted.items():
        parts = str(key).split(".")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(f"unknown setting {key!r}; per-modality settings are written "
                             "modalities.<name>.<key>, e.g. modalities.caption.likelihood")
        merged.setdefault(parts[1], {})[parts[2]] = v
    out["modalities"] = merged
    return out


def check_value(name: str, value: Any) -> Any:
    """``value`` for setting ``name``, checked (and normalised: lists become tuples).

    Args:
        name: a setting name of :class:`Settings` (or ``modalities.<name>.<key>``).
        value: its value; positive floats come back as ``float``, ``"400,400"`` or ``400``
            for ``hidden`` as a tuple of ints.

    Raises:
        ValueError: naming the setting, for an unknown name or a value of the wrong type,
            range or choice.
    """
    if str(name).startswith(MODALITIES_PREFIX):
        return fold_modality_settings({name: value})["modalities"]
    if name not in GROUP_OF:
        raise ValueError(f"unknown setting {name!r}; known settings: {', '.join(GROUP_OF)}")
    cls = GROUPS[GROUP_OF[name]]
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}[name]
    kind = meta["kind"]
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = (is_int or isinstance(value, float)) and math.isfinite(value)
    if kind == "positive_int" and not (is_int and value > 0):
        raise _fail(name, "a positive integer", value)
    if kind == "non_negative_int" and not (is_int and value >= 0):
        raise _fail(name, "an integer >= 0", value)
    if kind == "positive_float":
        if not (is_number and value > 0):
            raise _fail(name, "a positive number", value)
        return float(value)
    if kind == "unit_float":
        if not (is_number and 0 <= value <= 1):
            raise _fail(name, "a number in [0, 1]", value)
        return float(value)
    if kind == "modalities":
        return _check_modalities(value)
    if kind == "bool" and not isinstance(value, bool):
        raise _fail(name, "true or false", value)
    if kind == "str" and not isinstance(value, str):
        raise _fail(name, "a string", value)
    if kind == "choice" and value not in meta["choices"]:
        raise _fail(name, f"one of {', '.join(meta['choices'])}", value)
    if kind == "int_tuple":
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value,)
        if isinstance(value, str) and re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*", value):
            value = tuple(int(v) for v in value.split(","))  # "400,400" from --set
        if not (isinstance(value, (list, tuple)) and value and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
            raise _fail(name, "a list of positive integers such as [256, 256] or 256,256", value)
        return tuple(value)
    return value


def make_settings(values: Mapping[str, Any], extra: Mapping[str, Any] | None = None
                  ) -> Settings:
    """:class:`Settings` from ``{name: value}`` (missing names keep their defaults), every
    value checked by :func:`check_value`. ``extra`` declares further settings (name ->
    default) of a registered model; their values must have the type of the default.

    Args:
        values: ``{name: value}`` of the settings to set (``modalities.<name>.<key>`` keys
            are folded into ``modalities``).
        extra: the registered model's own settings, name -> default (None: none).

    Raises:
        ValueError: for an unknown setting or a bad value (:func:`check_value`).
    """
    extra = dict(extra or {})
    values = fold_modality_settings(values)
    grouped: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
    extra_values = dict(extra)
    for name, value in values.items():
        if name in extra and name not in GROUP_OF:
            extra_values[name] = _check_extra(name, value, extra[name])
        else:
            grouped[GROUP_OF.get(name, "latent")][name] = check_value(name, value)
    return Settings(**{group: GROUPS[group](**kw) for group, kw in grouped.items()},
                    extra=extra_values)


#: The defaults of every setting, by name.
DEFAULTS: dict[str, Any] = dict(Settings())
