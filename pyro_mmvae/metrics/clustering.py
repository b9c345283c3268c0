r"""Clustering metrics: how well cluster assignments recover the labels.

The three scores CMVAE's paper reports (Palumbo et al. 2024):

* NMI, the normalised mutual information :math:`I(Y; C) / \tfrac12 (H(Y) + H(C))`
  (:func:`sklearn.metrics.normalized_mutual_info_score`, arithmetic normalisation);
* ARI, the adjusted Rand index (:func:`sklearn.metrics.adjusted_rand_score`);
* accuracy under the best one-to-one matching of clusters to labels,
  :math:`\max_{\sigma} \frac1N \sum_i [\sigma(c_i) = y_i]`, the matching found by the
  Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`) on the contingency
  table; with more clusters than labels the unmatched clusters count as errors.

:func:`evaluate_clustering` scores a model that exposes ``cluster_posterior`` (e.g.
:class:`~pyro_mmvae.models.CMVAE`) on a labelled dataset, next to the baseline of
:class:`sklearn.cluster.KMeans` with as many clusters, fitted on the posterior means
:math:`\mathbb{E}[z \mid X]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from pyro_mmvae.metrics.common import evaluation_mode

__all__ = ["clustering_accuracy", "clustering_scores", "evaluate_clustering",
           "kmeans_clusters", "supports_clustering"]


def _labels(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one integer per data point (1-d), got shape "
                         f"{array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def _checked(labels: Any, clusters: Any) -> tuple[np.ndarray, np.ndarray]:
    y, c = _labels(labels, "labels"), _labels(clusters, "clusters")
    if y.shape != c.shape:
        raise ValueError(f"labels and clusters must have one entry per data point, got "
                         f"{y.size} labels and {c.size} clusters")
    if y.size == 0:
        raise ValueError("clustering scores need at least one data point")
    return y, c


def clustering_accuracy(labels: Any, clusters: Any) -> float:
    r"""Accuracy under the best one-to-one matching of clusters to labels.

    Args:
        labels: true labels ``(N,)``, integers (any values).
        clusters: cluster assignments ``(N,)``, integers (any values; as many clusters as
            labels or not).

    Returns:
        :math:`\max_\sigma \frac1N\sum_i [\sigma(c_i) = y_i]` in [0, 1].

    Raises:
        ValueError: for inputs that are not 1-d integer arrays of one length.
    """
    y, c = _checked(labels, clusters)
    ys, y_index = np.unique(y, return_inverse=True)
    cs, c_index = np.unique(c, return_inverse=True)
    table = np.zeros((cs.size, ys.size), dtype=np.int64)
    np.add.at(table, (c_index, y_index), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / y.size)


def clustering_scores(labels: Any, clusters: Any) -> dict[str, float]:
    """NMI, ARI and matched accuracy of ``clusters`` against ``labels``.

    Args:
        labels: true labels ``(N,)``, integers.
        clusters: cluster assignments ``(N,)``, integers.

    Returns:
        ``{"nmi", "ari", "accuracy", "num_clusters_used"}``.
    """
    y, c = _checked(labels, clusters)
    return {"nmi": float(normalized_mutual_info_score(y, c)),
            "ari": float(adjusted_rand_score(y, c)),
            "accuracy": clustering_accuracy(y, c),
            "num_clusters_used": int(np.unique(c).size)}


def kmeans_clusters(features: np.ndarray, num_clusters: int, seed: int = 0) -> np.ndarray:
    """:class:`sklearn.cluster.KMeans` assignments of ``features`` (10 restarts).

    Args:
        features: points ``(N, D)``, e.g. posterior means.
        num_clusters: the number of clusters k (at most N).
        seed: the random state of k-means (default 0).

    Returns:
        The cluster of each point, ``(N,)``.
    """
    from sklearn.cluster import KMeans

    features = np.asarray(features, dtype=np.float64)
    if not 1 <= num_clusters <= len(features):
        raise ValueError(f"k-means needs 1 <= num_clusters <= {len(features)} points, got "
                         f"{num_clusters}")
    return KMeans(num_clusters, n_init=10, random_state=seed).fit_predict(features)


def supports_clustering(vae: Any) -> str | None:
    """None if ``vae`` exposes ``cluster_posterior`` and ``num_clusters``, else why not.

    Args:
        vae: a model.
    """
    if callable(getattr(vae, "cluster_posterior", None)) and hasattr(vae, "num_clusters"):
        return None
    return f"{type(vae).__name__} has no cluster posterior (only clustering models, e.g. cmvae)"


def evaluate_clustering(vae: Any, dataset: Any, batch_size: int = 256,
                        device: torch.device | str = "cpu", max_points: int | None = None,
                        seed: int = 0, sources: Sequence[str] | None = None
                        ) -> dict[str, Any]:
    """The model's clusters and a k-means-on-z baseline, scored against the labels.

    The model's cluster of a row is the argmax of ``vae.cluster_posterior(batch)``; the
    baseline fits k-means with ``vae.num_clusters`` clusters on the posterior means
    :math:`\\mathbb{E}[z|X]` (:func:`pyro_mmvae.metrics.probe.posterior_mean`) of the same
    rows. Rows that miss a source modality are left out.

    Args:
        vae: a model with ``cluster_posterior`` and ``num_clusters`` (e.g. CMVAE).
        dataset: a labelled dataset (``batches(batch_size, device=...)`` yields
            ``(batch, labels)``).
        batch_size: rows per forward pass (default 256).
        device: where to run the model (default ``"cpu"``).
        max_points: use at most this many rows (None: all).
        seed: the k-means random state (default 0).
        sources: the modalities conditioned on (None: all of ``vae.names``).

    Returns:
        ``{"model": scores, "kmeans_z": scores, "points": N, "num_clusters": C}``, the scores
        of :func:`clustering_scores`.

    Raises:
        ValueError: for a model without a cluster posterior, or no usable row.
    """
    from pyro_mmvae.metrics.probe import posterior_mean

    reason = supports_clustering(vae)
    if reason is not None:
        raise ValueError(reason)
    names = list(vae.names if sources is None else sources)
    assigned, means, labels, seen = [], [], [], 0
    with evaluation_mode(vae):
        for batch, y in dataset.batches(batch_size, device=device):
            mask = getattr(batch, "mask", None)
            part = {s: batch[s] for s in names}
            if mask is not None:
                rows = torch.stack([mask[s] for s in names]).all(0)
                part, y = {s: v[rows] for s, v in part.items()}, y[rows]
            if max_points is not None:
                keep = max_points - seen
                part, y = {s: v[:keep] for s, v in part.items()}, y[:keep]
            if len(y) == 0:
                continue
            assigned.append(vae.cluster_posterior(part).argmax(-1).cpu())
            means.append(posterior_mean(vae, part, names).double().cpu())
            labels.append(y.cpu())
            seen += len(y)
            if max_points is not None and seen >= max_points:
                break
    if not labels:
        raise ValueError(f"no row of the dataset observes every modality of {names}")
    y = torch.cat(labels).numpy()
    z = torch.cat(means).numpy()
    k = min(int(vae.num_clusters), len(y))
    return {"model": clustering_scores(y, torch.cat(assigned).numpy()),
            "kmeans_z": clustering_scores(y, kmeans_clusters(z, k, seed)),
            "points": int(len(y)), "num_clusters": int(vae.num_clusters)}
