r"""Linear probes: how much of the label a posterior mean carries, for each subset of inputs.

For a source subset S the representation of a data point is the posterior mean
:math:`\bar z_S = \mathbb{E}_{q(z \mid X_S)}[z]` (for mixture posteriors — MMVAE, MoPoE —
the mean of the whole mixture). A multinomial logistic regression (scikit-learn, on
standardised features) is fitted on :math:`(\bar z_S, y)` of training points and its accuracy
measured on test points (Shi et al. 2019 and Sutter et al. 2021 report such "latent
representation" accuracies). Figures are averaged over the subsets of each size.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pyro import poutine
from torch import Tensor

from pyro_mmvae.distributions.subsets import source_subsets, subset_key, subset_size
from pyro_mmvae.metrics.common import evaluation_mode, head, progress_bar

__all__ = ["embed", "latent_probe", "posterior_mean", "probe_accuracy"]


def posterior_mean(vae: Any, data: dict[str, Tensor], sources: Sequence[str],
                   latent_site: str = "z") -> Tensor:
    r""":math:`\mathbb{E}_{q(z \mid X_S)}[z]` for S = ``sources``, shape ``(B, D)``.

    Read from the guide's ``latent_site`` run with ``stratify=False`` (the full posterior
    of the given modalities, the importance proposal); for guides without that option, the
    model's :meth:`posterior_location` (the point conditional generation decodes).
    """
    subset = {s: data[s] for s in sources}
    try:
        trace = poutine.trace(vae.guide).get_trace(subset, stratify=False)
        return trace.nodes[latent_site]["fn"].mean
    except (TypeError, KeyError, NotImplementedError, AttributeError):
        return vae.posterior_location(subset, list(sources))


def embed(vae: Any, dataset: Any, sources: Sequence[str], batch_size: int = 256,
          device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Posterior means (N, D) and labels (N,) of ``dataset`` given ``sources``, as NumPy
    (with missing modalities: of the rows that observe every source)."""
    features, labels = [], []
    with evaluation_mode(vae):
        for batch, y in dataset.batches(batch_size, device=device):
            mask = getattr(batch, "mask", None)
            if mask is not None:  # the rows that observe every source
                rows = torch.stack([mask[s] for s in sources]).all(0)
                if not bool(rows.any()):
                    continue
                batch, y = {s: batch[s][rows] for s in sources}, y[rows]
            features.append(posterior_mean(vae, batch, sources).double().cpu())
            labels.append(y.cpu())
    if not features:
        raise ValueError(f"no row observes every modality of {list(sources)}")
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, max_iter: int = 1000) -> float:
    """Test accuracy of a logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        raise ValueError("the probe needs at least two classes among the training labels")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: the accuracy is what counts
        model.fit(train_x, train_y)
    return float((model.predict(test_x) == test_y).mean())


def latent_probe(
    vae: Any,
    train_ds: Any,
    test_ds: Any,
    subset_sizes: Sequence[int] | None = None,
    max_subsets_per_size: int | None = 3,
    max_train_points: int | None = 3000,
    max_test_points: int | None = 2000,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    r"""Linear-probe accuracy of the label from :math:`\mathbb{E}[z \mid X_S]`, by :math:`|S|`.

    Subset sizes default to 1..M (M: all modalities). At most ``max_subsets_per_size``
    subsets of each size (seeded choice) and the first ``max_train_points`` /
    ``max_test_points`` points are used. Returns ``by_subset`` (``{"m0+m2": acc}``),
    ``by_subset_size`` (mean over subsets), the counts and the seconds taken.
    """
    names = tuple(getattr(vae, "names", None) or train_ds.modalities)
    m = len(names)
    sizes = list(range(1, m + 1)) if subset_sizes is None else sorted(set(subset_sizes))
    if not sizes or any(not 1 <= k <= m for k in sizes):
        raise ValueError(f"probe subset sizes must lie in 1..{m}, got {list(subset_sizes or [])}")
    subsets = source_subsets(names, [k for k in sizes if k < m] or [1], max_subsets_per_size,
                             seed) if m > 1 else []
    subsets = [s for s in subsets if len(s) in sizes]
    if m in sizes:
        subsets.append(names)
    train_part, test_part = head(train_ds, max_train_points), head(test_ds, max_test_points)
    start = time.perf_counter()
    by_subset: dict[str, float] = {}
    with progress_bar(len(subsets), "probe", progress, unit="subset") as bar:
        for s in subsets:
            train_x, train_y = embed(vae, train_part, s, batch_size, device)
            test_x, test_y = embed(vae, test_part, s, batch_size, device)
            by_subset[subset_key(s)] = probe_accuracy(train_x, train_y, test_x, test_y)
            bar.update()
    by_size = {k: float(np.mean([a for key, a in by_subset.items()
                                 if subset_size(key) == k])) for k in sizes}
    return {
        "by_subset": by_subset,
        "by_subset_size": by_size,
        "representation": "posterior mean E[z | X_S] (mixture mean for mixture posteriors)",
        "classifier": "logistic regression on standardised features (scikit-learn)",
        "num_train_points": len(train_part),
        "num_test_points": len(test_part),
        "seconds": round(time.perf_counter() - start, 2),
    }
