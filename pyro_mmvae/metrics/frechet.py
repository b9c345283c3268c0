r"""Fréchet distances between feature distributions: generative quality of images.

The Fréchet (2-Wasserstein) distance between Gaussians fitted to two sets of features,

.. math:: d^2 = \lVert\mu_1 - \mu_2\rVert^2 + \operatorname{tr}\Big(\Sigma_1 + \Sigma_2
          - 2\big(\Sigma_1^{1/2}\,\Sigma_2\,\Sigma_1^{1/2}\big)^{1/2}\Big)

(Dowson & Landau 1982; Heusel et al. 2017 for FID), is computed here from two symmetric
eigendecompositions in float64 — :math:`\Sigma_1 = V \Lambda V^\top`,
:math:`\Sigma_1^{1/2} = V \Lambda^{1/2} V^\top`, and the eigenvalues :math:`\nu_i` of the
symmetric PSD matrix :math:`\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}` give
:math:`\operatorname{tr}(\cdot)^{1/2} = \sum_i \sqrt{\nu_i}` — no general matrix square
root, so 2048-dimensional features take seconds on a CPU (:func:`trace_sqrt_product` uses a
Cholesky factor of :math:`\Sigma_1` in place of its square root when it exists).

Two feature spaces:

* **classifier Fréchet distance**: the penultimate layer of the library's own per-modality
  digit classifier (:class:`~pyro_mmvae.metrics.ModalityClassifiers`); always available
  offline, comparable between models evaluated with the same classifiers, *not* FID;
* **Inception FID**: pool3 features (2048-d) of the FID Inception-v3 network of
  ``pytorch-fid`` (optional extra ``pyro_mmvae[fid]``) with the weights file the user
  supplies (``pt_inception-2015-12-05-6726825d.pth``); nothing is downloaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

#: File name of pytorch-fid's Inception weights (the user supplies the file; nothing is downloaded).
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_FEATURES = 2048

__all__ = [
    "FID_WEIGHTS_NAME",
    "classifier_frechet_distance",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "frechet_distances",
    "have_pytorch_fid",
    "inception_features",
    "inception_fid",
    "load_fid_inception",
    "trace_sqrt_product",
]


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    r"""Mean :math:`\mu` and unbiased covariance :math:`\Sigma` (float64) of ``features`` (N, F).

    Args:
        features: finite feature vectors ``(N, F)``, N >= 2.

    Returns:
        ``(mu, cov)`` of shapes ``(F,)`` and ``(F, F)``.
    """
    if features.dim() != 2 or features.size(0) < 2:
        raise ValueError(f"features must have shape (N, F) with N >= 2, got "
                         f"{tuple(features.shape)}")
    x = features.detach().double()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or infinite values")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.t() @ centred / (x.size(0) - 1)


def _drop_rounding(values: Tensor) -> Tensor:
    r"""Eigenvalues of a PSD matrix with those below its rounding error set to 0.

    Eigenvalues under :math:`F\,\epsilon\,\lambda_{max}` are noise of the decomposition
    (and may be negative); their square roots (~1e-8 each) would add up over the null space
    of a singular covariance, so they are dropped.
    """
    floor = values.numel() * torch.finfo(values.dtype).eps * values.abs().max()
    return torch.where(values > floor, values, torch.zeros_like(values))


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric square root of a PSD matrix by ``eigh`` (rounding-error eigenvalues -> 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * _drop_rounding(values).sqrt()) @ vectors.t()


def trace_sqrt_product(cov1: Tensor, cov2: Tensor) -> Tensor:
    r""":math:`\operatorname{tr}(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2}` for PSD
    matrices, in float64.

    With a Cholesky factor :math:`\Sigma_1 = LL^\top`, :math:`L^\top\Sigma_2 L` is similar to
    :math:`\Sigma_1\Sigma_2` and hence has the eigenvalues :math:`\nu_i` of
    :math:`\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}`: one Cholesky, two matrix products and one
    ``eigvalsh`` (a few seconds for F = 2048 on a CPU). A singular :math:`\Sigma_1` (fewer
    samples than features, dead units) falls back to the symmetric square root by ``eigh``.
    Coordinates with zero variance in both sets are dropped first: they add nothing here.

    Args:
        cov1: :math:`\Sigma_1`, symmetric PSD ``(F, F)``, float64.
        cov2: :math:`\Sigma_2`, symmetric PSD ``(F, F)``, float64.

    Returns:
        A float64 scalar tensor.
    """
    keep = (cov1.diagonal() > 0) | (cov2.diagonal() > 0)
    if not bool(keep.all()):
        cov1, cov2 = cov1[keep][:, keep], cov2[keep][:, keep]
    if cov1.numel() == 0:
        return cov1.new_zeros(())
    factor, info = torch.linalg.cholesky_ex(cov1)
    if int(info) == 0:
        middle = factor.t() @ cov2 @ factor
    else:
        root = _psd_sqrt(cov1)
        middle = root @ cov2 @ root
    nu = torch.linalg.eigvalsh((middle + middle.t()) / 2)
    return _drop_rounding(nu).sqrt().sum()


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    r"""Squared Fréchet distance between :math:`N(\mu_1, \Sigma_1)` and :math:`N(\mu_2, \Sigma_2)`.

    :math:`\lVert\mu_1-\mu_2\rVert^2 + \operatorname{tr}\Sigma_1 + \operatorname{tr}\Sigma_2
    - 2\sum_i \sqrt{\nu_i}` with :math:`\nu_i` the eigenvalues of
    :math:`\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}` (see :func:`trace_sqrt_product`), all in
    float64 (FID reports this squared distance). Covariances must be symmetric positive
    semi-definite ``(F, F)``.

    Args:
        mu1: :math:`\mu_1`, shape ``(F,)``.
        cov1: :math:`\Sigma_1`, shape ``(F, F)`` (symmetrised before use).
        mu2: :math:`\mu_2`, shape ``(F,)``.
        cov2: :math:`\Sigma_2`, shape ``(F, F)`` (symmetrised before use).

    Returns:
        The squared distance, >= 0 (clipped at 0 against rounding).
    """
    mu1, mu2 = torch.as_tensor(mu1).double(), torch.as_tensor(mu2).double()
    cov1, cov2 = torch.as_tensor(cov1).double(), torch.as_tensor(cov2).double()
    dim = mu1.numel()
    if mu1.shape != (dim,) or mu2.shape != (dim,) or cov1.shape != (dim, dim) \
            or cov2.shape != (dim, dim):
        raise ValueError(f"need means (F,) and covariances (F, F) of one F; got "
                         f"{tuple(mu1.shape)}, {tuple(cov1.shape)}, {tuple(mu2.shape)}, "
                         f"{tuple(cov2.shape)}")
    cov1 = (cov1 + cov1.t()) / 2
    cov2 = (cov2 + cov2.t()) / 2
    cross = trace_sqrt_product(cov1, cov2)
    value = (mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * cross
    return max(float(value), 0.0)


def frechet_distance_from_features(features1: Tensor, features2: Tensor) -> float:
    r"""Fréchet distance between Gaussians fitted to two feature sets (N1, F) and (N2, F).

    With at least as many features as points (:math:`\max(N_1, N_2) \le F`) the
    covariances :math:`\Sigma_i = A_i^\top A_i` (:math:`A_i` the centred features over
    :math:`\sqrt{N_i - 1}`) have rank below F and the cross term is computed from the small
    matrix :math:`A_1 A_2^\top` (:math:`N_1 \times N_2`): the eigenvalues of
    :math:`\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}` are the squared singular values of
    :math:`A_1 A_2^\top`, so :math:`\operatorname{tr}(\cdot)^{1/2} = \lVert A_1 A_2^\top
    \rVert_*` and :math:`\operatorname{tr}\Sigma_i = \lVert A_i \rVert_F^2`. Otherwise the
    F x F covariances go to :func:`frechet_distance`.

    Args:
        features1: finite features ``(N1, F)``, N1 >= 2.
        features2: finite features ``(N2, F)``, N2 >= 2, the same F.

    Returns:
        The squared Fréchet distance (>= 0).
    """
    if features1.dim() != 2 or features2.dim() != 2 or features1.size(1) != features2.size(1):
        raise ValueError(f"feature sets must be (N, F) with the same F, got "
                         f"{tuple(features1.shape)} and {tuple(features2.shape)}")
    if max(features1.size(0), features2.size(0)) > features1.size(1):
        return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
    (mu1, a1), (mu2, a2) = _centred(features1), _centred(features2)
    cross = torch.linalg.svdvals(a1 @ a2.t()).sum()
    value = (mu1 - mu2).pow(2).sum() + a1.pow(2).sum() + a2.pow(2).sum() - 2 * cross
    return max(float(value), 0.0)


def frechet_distances(reference: Tensor, candidates: Mapping[str, Tensor]) -> dict[str, float]:
    """Fréchet distance of each candidate feature set (N_i, F) to one ``reference`` (N, F).

    Picks the cheaper exact route per pair (see :func:`frechet_distance_from_features`) and
    computes the reference's mean and covariance at most once.

    Args:
        reference: the reference features ``(N, F)`` (e.g. of real test images).
        candidates: name -> features ``(N_i, F)`` (e.g. of generated images per source).

    Returns:
        name -> squared Fréchet distance to ``reference``.
    """
    reference_stats: tuple[Tensor, Tensor] | None = None
    out = {}
    for key, features in candidates.items():
        if max(reference.size(0), features.size(0)) <= reference.size(1):
            out[key] = frechet_distance_from_features(reference, features)
            continue
        if reference_stats is None:
            reference_stats = feature_statistics(reference)
        out[key] = frechet_distance(*reference_stats, *feature_statistics(features))
    return out


def _centred(features: Tensor) -> tuple[Tensor, Tensor]:
    r"""Mean and centred features over :math:`\sqrt{N-1}` (so that A^T A is the covariance)."""
    if features.size(0) < 2:
        raise ValueError(f"need at least 2 feature vectors, got {features.size(0)}")
    x = features.detach().double()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("features contain NaN or infinite values")
    mu = x.mean(0)
    return mu, (x - mu) / (x.size(0) - 1) ** 0.5


def classifier_frechet_distance(classifiers: Any, name: str, real: Tensor,
                                generated: Tensor) -> float:
    """Fréchet distance in the feature space of modality ``name``'s classifier (not FID).

    Features are the classifier's penultimate layer (:meth:`ModalityClassifiers.features`).

    Args:
        classifiers: the :class:`~pyro_mmvae.metrics.classifiers.ModalityClassifiers`.
        name: the modality whose classifier gives the features.
        real: real inputs of that modality ``(N, ...)``.
        generated: generated inputs of that modality ``(N', ...)``.

    Returns:
        The squared Fréchet distance between the two feature sets.
    """
    return frechet_distance_from_features(classifiers.features(name, real).cpu(),
                                          classifiers.features(name, generated).cpu())


# ---------------------------------------------------------------------- Inception FID
def have_pytorch_fid() -> bool:
    """True if the optional ``pytorch-fid`` package imports."""
    try:
        import pytorch_fid.inception  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _weights_from(state_dict: dict[str, Tensor]) -> Iterator[None]:
    """Make ``pytorch_fid`` load ``state_dict`` instead of downloading its weights."""
    from pytorch_fid import inception

    original = inception.load_state_dict_from_url
    inception.load_state_dict_from_url = lambda *args, **kwargs: state_dict
    try:
        yield
    finally:
        inception.load_state_dict_from_url = original


def load_fid_inception(weights_path: str | Path, device: torch.device | str = "cpu"
                       ) -> nn.Module:
    """pytorch-fid's FID Inception-v3 (pool3 output) with the weights in ``weights_path``.

    ``weights_path`` is the standard FID weights file (``pt_inception-2015-12-05-6726825d.pth``,
    a state dict); it is read locally, nothing is downloaded. Raises ImportError without
    pytorch-fid, FileNotFoundError for a missing file and ValueError for a wrong one.

    Args:
        weights_path: path of the FID Inception weights file (``~`` is expanded).
        device: where to put the network (default ``"cpu"``).

    Returns:
        The network in eval mode.
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights file at {path}; pass the path of "
                                f"{FID_WEIGHTS_NAME} (the standard FID weights)")
    if not have_pytorch_fid():
        raise ImportError("Inception FID needs the optional package pytorch-fid: "
                          "pip install 'pyro_mmvae[fid]'")
    from pytorch_fid.inception import InceptionV3

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read Inception weights {path} ({type(err).__name__}); "
                         f"it should be {FID_WEIGHTS_NAME}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a state dict; it should be {FID_WEIGHTS_NAME}")
    try:
        with _weights_from(state):
            net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[INCEPTION_FEATURES]])
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the FID Inception network "
                         f"({str(err).splitlines()[0]}); it should be {FID_WEIGHTS_NAME}"
                         ) from err
    return net.eval().to(device)


@torch.no_grad()
def inception_features(net: nn.Module, images: Tensor, batch_size: int = 50) -> Tensor:
    """Pool3 features (N, 2048) of images (N, 1 or 3, H, W) in [0, 1] (resized to 299).

    Args:
        net: the network from :func:`load_fid_inception`.
        images: images ``(N, 1 or 3, H, W)`` with values in [0, 1] (clamped); one channel is
            repeated to three.
        batch_size: images per forward pass (default 50).

    Returns:
        Float64 features ``(N, 2048)`` on the CPU.
    """
    if images.dim() != 4 or images.size(1) not in (1, 3):
        raise ValueError(f"Inception features need images (N, 1 or 3, H, W), got "
                         f"{tuple(images.shape)}")
    device = next(net.parameters()).device
    out = []
    for part in images.split(batch_size):
        x = part.to(device, torch.float32).clamp(0, 1)
        if x.size(1) == 1:
            x = x.expand(-1, 3, -1, -1)
        out.append(net(x)[0].flatten(1).double().cpu())
    return torch.cat(out)


def inception_fid(real: Tensor, generated: Tensor, weights_path: str | Path | None = None,
                  net: nn.Module | None = None, batch_size: int = 50,
                  device: torch.device | str = "cpu") -> float:
    """FID (Heusel et al. 2017) between two image sets, with the FID Inception-v3 features.

    Pass ``net`` (from :func:`load_fid_inception`) to reuse a loaded network, else
    ``weights_path``.

    Args:
        real: real images ``(N, 1 or 3, H, W)`` in [0, 1].
        generated: generated images ``(N', 1 or 3, H, W)`` in [0, 1].
        weights_path: the FID Inception weights file, used when ``net`` is ``None``.
        net: a loaded FID Inception network (``None``: load one from ``weights_path``).
        batch_size: images per forward pass (default 50).
        device: where to load the network (default ``"cpu"``; ignored with ``net``).

    Returns:
        The FID (squared Fréchet distance of the pool3 features).
    """
    if net is None:
        if weights_path is None:
            raise ValueError("inception_fid needs weights_path (the FID Inception weights) "
                             "or a loaded net")
        net = load_fid_inception(weights_path, device)
    return frechet_distance_from_features(inception_features(net, real, batch_size),
                                          inception_features(net, generated, batch_size))
