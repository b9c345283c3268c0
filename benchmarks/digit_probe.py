r"""How fast does a VAE put the digit into its latent? A unimodal probe on one PolyMNIST modality.

The CPU reproduction (``benchmarks/reproduce.py``) has a few thousand steps per model. This
script isolates what limits the first of them: a one-modality VAE with the small
convolutional networks (:mod:`pyro_mmvae.nets.conv`) or the library's MLPs (``--nets mlp``)
is trained on modality ``m0`` with a chosen image likelihood and posterior, and every
``--every`` steps the library's logistic-regression probe
(:func:`pyro_mmvae.metrics.probe.probe_accuracy`, fitted on the posterior means of 5,000
training images, scored on 2,000 test images) measures how much of the digit class the
latent carries (chance: 0.1).

The objective is the β-ELBO :math:`\log p(x|z) - \beta\,[\log q(z|x) - \log p(z)]`, one
sample, with :math:`p(z)` a standard Normal or Laplace(0, 1) and the scale map ``softmax``
(:math:`D\,\mathrm{softmax}(s)`, MMVAE+) or ``softplus``.

Usage::

    python benchmarks/digit_probe.py --data-root DATA/polymnist --likelihood laplace --scale 0.75
    python benchmarks/digit_probe.py --data-root DATA/polymnist --likelihood normal --scale 0.2
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pyro_mmvae.metrics.probe import probe_accuracy
from pyro_mmvae.nets.conv import PolyMNISTConvDecoder, PolyMNISTConvEncoder
from pyro_mmvae.nets.mlp import MLPDecoder, MLPEncoder
from pyro_mmvae.runs import load_datasets

FAMILIES = {"normal": torch.distributions.Normal, "laplace": torch.distributions.Laplace}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder holding PolyMNIST/")
    p.add_argument("--likelihood", choices=tuple(FAMILIES), default="laplace")
    p.add_argument("--scale", type=float, default=0.75, help="likelihood scale")
    p.add_argument("--posterior", choices=tuple(FAMILIES), default="laplace")
    p.add_argument("--scale-map", choices=("softmax", "softplus"), default="softmax")
    p.add_argument("--nets", choices=("conv", "mlp"), default="conv",
                   help="the protocol's conv nets or the library's MLP (400, 400)")
    p.add_argument("--beta", type=float, default=2.5)
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-images", type=int, default=20000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def first_images(dataset, n: int) -> tuple[Tensor, Tensor]:
    """Modality ``m0`` and the digit labels of the first ``n`` tuples."""
    batch, labels = next(iter(dataset.subset(torch.arange(min(n, len(dataset))))
                              .batches(n, device="cpu")))
    return batch["m0"], torch.as_tensor(labels)


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_ds, test_ds = load_datasets("polymnist", args.data_root)
    x_train, y_train = first_images(train_ds, args.train_images)
    x_test, y_test = first_images(test_ds, 2000)
    dim = args.latent_dim
    if args.nets == "conv":
        encoder, decoder = PolyMNISTConvEncoder(dim), PolyMNISTConvDecoder(dim)
    else:
        shape = tuple(x_train.shape[1:])
        encoder = MLPEncoder(shape, dim, input_offset=0.5, input_scale=0.5)
        decoder = MLPDecoder(dim, shape)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3,
                                 amsgrad=True)
    posterior, likelihood = FAMILIES[args.posterior], FAMILIES[args.likelihood]

    def scale_of(raw: Tensor) -> Tensor:
        if args.scale_map == "softmax":
            return F.softmax(raw, -1) * dim + 1e-6
        return F.softplus(raw) + 1e-6

    records, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        x = x_train[torch.randint(0, len(x_train), (args.batch_size,))]
        loc, raw = encoder(x)
        q = posterior(loc, scale_of(raw))
        z = q.rsample()
        log_lik = likelihood(decoder(z), args.scale).log_prob(x).flatten(1).sum(-1)
        kl = (q.log_prob(z) - posterior(torch.zeros_like(loc), 1.0).log_prob(z)).sum(-1)
        loss = -(log_lik - args.beta * kl).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0:
            with torch.no_grad():
                features, test_features = encoder(x_train[:5000])[0], encoder(x_test)[0]
            record = {"step": step, "loss": round(loss.item(), 1),
                      "kl": round(kl.mean().item(), 2),
                      "probe": round(probe_accuracy(features.numpy(), y_train[:5000].numpy(),
                                                    test_features.numpy(), y_test.numpy()), 3),
                      "seconds": round(time.perf_counter() - start, 1)}
            records.append(record)
            print(json.dumps(record), flush=True)
    return records


if __name__ == "__main__":
    main()
