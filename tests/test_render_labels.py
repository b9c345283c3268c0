"""``pyro.render_model`` labels each observation with its likelihood, not the scale wrapper."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_mmvae.likelihoods import FixedScale, get_likelihood
from pyro_mmvae.modality import Modality
from pyro_mmvae.models.mixture import MMVAE

D = 2


class _Encoder(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Linear(width, 2 * D)

    def forward(self, x):
        loc, raw = self.net(x.float().flatten(1)).chunk(2, -1)
        return loc, raw


def _modality(name: str, likelihood, width: int = 3, out: int = 3) -> Modality:
    return Modality(name, (width,), likelihood, _Encoder(width), nn.Linear(D, out))


def test_render_model_names_the_likelihoods():
    pytest.importorskip("graphviz")
    vae = MMVAE([_modality("a", "laplace"), _modality("b", "normal"),
                 _modality("c", "bernoulli"),
                 _modality("d", get_likelihood("categorical", num_classes=4), out=3 * 4)],
                latent_dim=D)
    batch = {"a": torch.randn(4, 3), "b": torch.randn(4, 3), "c": torch.rand(4, 3),
             "d": torch.randint(0, 4, (4, 3))}
    source = pyro.render_model(vae.model, model_args=(batch,),
                               render_distributions=True).source
    assert "FixedScale" not in source
    for site, label in (("a", "Laplace"), ("b", "Normal"), ("c", "Bernoulli"),
                        ("d", "Categorical")):
        assert f"x_{site} ~ {label}" in source, source


@pytest.mark.parametrize("family,reference", [("laplace", dist.Laplace),
                                              ("normal", dist.Normal)])
def test_the_renamed_wrapper_scores_and_expands_as_before(family, reference):
    loc, x = torch.randn(5, 3), torch.randn(5, 3)
    fn = FixedScale(loc, 0.75, family)
    assert isinstance(fn, FixedScale) and type(fn).__name__ == reference.__name__
    torch.testing.assert_close(fn.log_prob(x), reference(loc, 0.75).log_prob(x))
    wide = fn.expand(torch.Size([2, 5, 3]))
    assert isinstance(wide, FixedScale) and type(wide) is type(fn)
    assert wide.batch_shape == (2, 5, 3)
