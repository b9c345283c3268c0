r"""MVAE's sub-sampled objective (Wu & Goodman 2018).

.. math:: \mathcal{L} = \mathrm{ELBO}(X) + \sum_m \mathrm{ELBO}(x_m)
          + \sum_{j=1}^{k} \mathrm{ELBO}(X_{S_j}),\qquad S_j \sim \mathcal{U}\{S : 2 \le |S| < M\}

Each ELBO is one stratum of the product-of-experts guide (see
:class:`~pyro_mmvae.models.MVAE`); this subclass only draws the k random subsets each step and
hands the same ones to model and guide as the ``subsets`` keyword. Stratum weights are 1:
the subset ELBOs are summed, as in the paper.
"""

from __future__ import annotations

import torch

from pyro_mmvae.distributions.experts import subset_matrix
from pyro_mmvae.infer.base import MultimodalELBO


class SubsampledELBO(MultimodalELBO):
    """Joint + unimodal + k random-subset ELBOs of a product-of-experts model.

    :param num_modalities: M.
    :param num_subsets: k, random subsets of size 2..M-1 drawn per step (0 for M <= 2).
    """

    def __init__(self, num_modalities: int, num_subsets: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_subsets < 0:
            raise ValueError(f"num_subsets must be >= 0, got {num_subsets}")
        subsets = subset_matrix(num_modalities)
        sizes = subsets.sum(1)
        self.candidates = subsets[(sizes >= 2) & (sizes < num_modalities)]
        self.num_subsets = num_subsets if len(self.candidates) else 0

    def draw_subsets(self) -> torch.Tensor | None:
        """k subsets drawn uniformly (with replacement) from those of size 2..M-1."""
        if self.num_subsets == 0:
            return None
        index = torch.randint(len(self.candidates), (self.num_subsets,))
        return self.candidates[index]

    def objective(self, model, guide, *args, **kwargs):
        if kwargs.get("subsets") is None:
            subsets = self.draw_subsets()
            if subsets is not None:
                kwargs["subsets"] = subsets
        return super().objective(model, guide, *args, **kwargs)
