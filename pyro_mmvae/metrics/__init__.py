"""Evaluation: classifiers, coherence, Fréchet distances, likelihoods, probes and figures.

``evaluate_run(run_dir)`` / ``pyro-mmvae evaluate RUN_DIR`` evaluate a trained run;
``evaluate_model(vae, train_ds, test_ds)`` any model in memory; the pieces below work alone.
"""

from pyro_mmvae.distributions.subsets import source_subsets
from pyro_mmvae.metrics.classifiers import (
    ModalityClassifiers,
    dataset_fingerprint,
    default_cache_dir,
    get_classifiers,
    train_modality_classifiers,
)
from pyro_mmvae.metrics.coherence import (
    conditional_coherence,
    cross_generate,
    mean_pairwise_l2,
    unconditional_coherence,
)
from pyro_mmvae.metrics.evaluate import (
    METRICS,
    EvalSettings,
    evaluate_model,
    evaluate_run,
)
from pyro_mmvae.metrics.frechet import (
    classifier_frechet_distance,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    inception_fid,
    load_fid_inception,
)
from pyro_mmvae.metrics.likelihood import (
    PROPOSALS,
    ConditionalEstimate,
    ImportanceEstimate,
    conditional_log_likelihood,
    dataset_log_likelihood,
    effective_sample_size,
    importance_log_weights,
    log_marginal,
    pareto_k,
    vae_log_likelihood,
)
from pyro_mmvae.metrics.plots import (
    save_coherence_plot,
    save_cross_generation_grid,
    save_pareto_k_histogram,
    save_unconditional_grid,
)
from pyro_mmvae.metrics.probe import latent_probe, posterior_mean

__all__ = [
    "METRICS",
    "ConditionalEstimate",
    "EvalSettings",
    "ImportanceEstimate",
    "ModalityClassifiers",
    "PROPOSALS",
    "classifier_frechet_distance",
    "conditional_coherence",
    "conditional_log_likelihood",
    "cross_generate",
    "dataset_fingerprint",
    "dataset_log_likelihood",
    "default_cache_dir",
    "effective_sample_size",
    "evaluate_model",
    "evaluate_run",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "get_classifiers",
    "importance_log_weights",
    "inception_fid",
    "latent_probe",
    "load_fid_inception",
    "log_marginal",
    "mean_pairwise_l2",
    "pareto_k",
    "posterior_mean",
    "save_coherence_plot",
    "save_cross_generation_grid",
    "save_pareto_k_histogram",
    "save_unconditional_grid",
    "source_subsets",
    "train_modality_classifiers",
    "unconditional_coherence",
    "vae_log_likelihood",
]
