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

    Args:
        vae: a :mod:`pyro_mmvae.models` VAE (any model with ``guide`` or
            ``posterior_location``).
        data: the batch, dict of modality name -> tensor ``(B, ...)``; only ``sources`` are
            read, and each must be present in every row.
        sources: the modality names S to condition on.
        latent_site: the guide's latent site to read (default ``"z"``).
    """
    subset = {s: data[s] for s in sources}
    try:
        trace = poutine.trace(vae.guide).get_trace(subset, stratify=False)
        return trace.nodes[latent_site]["fn"].mean
    except (TypeError, KeyError, NotImplementedError, AttributeError):
        return vae.posterior_location(subset, list(sources))


class NoObservedRowsError(ValueError):
    """No row of a dataset observes every modality of a source subset."""


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean; None (not measurable) when a value is None or there is none."""
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


def embed(vae: Any, dataset: Any, sources: Sequence[str], batch_size: int = 256,
          device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Posterior means (N, D) and labels (N,) of ``dataset`` given ``sources``, as NumPy
    (with missing modalities: of the rows that observe every source).

    Args:
        vae: the model, as in :func:`posterior_mean`; run in eval mode without gradients.
        dataset: a labelled multimodal dataset (``batches(batch_size, device=...)`` yields
            ``(batch, labels)``).
        sources: the modality names S to condition on.
        batch_size: data points per forward pass (default 256).
        device: where to run the model (default ``"cpu"``).

    Raises:
        NoObservedRowsError: when no row observes every source.
    """
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
        raise NoObservedRowsError(f"no row observes every modality of {list(sources)}")
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, max_iter: int = 1000) -> float:
    """Test accuracy of a logistic regression on standardised features.

    Args:
        train_x: training features ``(N, D)``.
        train_y: training labels ``(N,)``; at least two classes.
        test_x: test features ``(N', D)``.
        test_y: test labels ``(N',)``.
        max_iter: iterations of scikit-learn's ``LogisticRegression`` (default 1000).

    Returns:
        The fraction of correct test predictions, in [0, 1].
    """
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
    ``by_subset_size`` (mean over subsets), the counts and the seconds taken. A subset that
    no row observes (a modality absent in every row) is ``None``, as is every mean over it;
    ``not_measurable`` and ``note`` say why.

    Args:
        vae: the model, as in :func:`posterior_mean`.
        train_ds: the labelled dataset the probes are fitted on.
        test_ds: the labelled dataset their accuracy is measured on.
        subset_sizes: the sizes :math:`|S|` to probe, each in 1..M (``None``, the default:
            all of 1..M).
        max_subsets_per_size: subsets drawn per size (default 3; ``None``: all of them).
        max_train_points: leading training points used (default 3000; ``None``: all).
        max_test_points: leading test points used (default 2000; ``None``: all).
        batch_size: data points per forward pass (default 256).
        device: where to run the model (default ``"cpu"``).
        seed: seed of the subset choice (default 0).
        progress: show a progress bar on stderr (default False).
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
    by_subset: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    with progress_bar(len(subsets), "probe", progress, unit="subset") as bar:
        for s in subsets:
            try:
                which = "training"
                train_x, train_y = embed(vae, train_part, s, batch_size, device)
                which = "test"
                test_x, test_y = embed(vae, test_part, s, batch_size, device)
            except NoObservedRowsError as error:  # a modality absent in every row
                by_subset[subset_key(s)] = None
                notes[subset_key(s)] = f"not measurable: {error} among the {which} points"
            else:
                by_subset[subset_key(s)] = probe_accuracy(train_x, train_y, test_x, test_y)
            bar.update()
    by_size = {k: _mean([a for key, a in by_subset.items() if subset_size(key) == k])
               for k in sizes}
    return {
        **({"note": next(iter(notes.values())), "not_measurable": notes} if notes else {}),
        "by_subset": by_subset,
        "by_subset_size": by_size,
        "representation": "posterior mean E[z | X_S] (mixture mean for mixture posteriors)",
        "classifier": "logistic regression on standardised features (scikit-learn)",
        "num_train_points": len(train_part),
        "num_test_points": len(test_part),
        "seconds": round(time.perf_counter() - start, 2),
    }
