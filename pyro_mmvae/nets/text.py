"""Small networks for token sequences (ids ``(B, L)`` over a vocabulary of V tokens).

* :class:`TextEncoder`: embedding (E per token), concatenated over the L positions (word
  order kept), an MLP, then ``loc`` and ``raw_scale`` heads: ``(B, L) -> ((B, D), (B, D))``.
* :class:`TextDecoder`: an MLP to ``L * V`` values, reshaped to logits ``(N, L, V)`` for a
  :class:`~pyro_mmvae.likelihoods.CategoricalLikelihood`.
* :class:`TextClassifier`: bag of embeddings (summed over positions) and a linear layer, the
  coherence classifier of a token modality.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pyro_mmvae.nets.mlp import MLPDecoder, _check_positive_dims, _mlp_trunk, check_trailing_shape


class TextEncoder(nn.Module):
    """``x (B, L)`` token ids -> ``(loc (B, D), raw_scale (B, D))``.

    Args:
        length: L, tokens per sequence.
        vocab_size: V, the vocabulary size (ids in ``[0, V)``).
        latent_dim: D, the size of ``loc`` and ``raw_scale``.
        hidden: widths of the MLP's hidden layers (ReLU), default ``(400, 400)``.
        embed_dim: E, the embedding size per token (default 32).
    """

    def __init__(self, length: int, vocab_size: int, latent_dim: int,
                 hidden: Sequence[int] = (400, 400), embed_dim: int = 32) -> None:
        super().__init__()
        self.length, self.vocab_size, self.latent_dim, self.embed_dim = _check_positive_dims(
            [length, vocab_size, latent_dim, embed_dim], "sizes")
        self.in_shape = (self.length,)
        hidden = _check_positive_dims(hidden, "hidden widths")
        self.embed = nn.Embedding(self.vocab_size, self.embed_dim)
        self.trunk = _mlp_trunk(self.length * self.embed_dim, hidden, nn.ReLU)
        width = hidden[-1] if hidden else self.length * self.embed_dim
        self.loc = nn.Linear(width, self.latent_dim)
        self.raw_scale = nn.Linear(width, self.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc, raw_scale)``, each ``(B, latent_dim)``.

        Args:
            x: token ids ``(B, L)``, any integer (or integral float) dtype; ids outside
                ``[0, V)`` are clamped into it.
        """
        check_trailing_shape(x, self.in_shape, type(self).__name__)
        h = self.trunk(self.embed(x.long().clamp(0, self.vocab_size - 1)).flatten(1))
        return self.loc(h), self.raw_scale(h)


class TextDecoder(MLPDecoder):
    """``z (N, D)`` -> logits ``(N, L, V)``: an :class:`MLPDecoder` to ``L * V`` outputs.

    Args:
        latent_dim: D, the size of the latent code decoded.
        length: L, tokens per sequence.
        vocab_size: V, the vocabulary size.
        hidden: widths of the MLP's hidden layers (ReLU), default ``(400, 400)``.
    """

    def __init__(self, latent_dim: int, length: int, vocab_size: int,
                 hidden: Sequence[int] = (400, 400)) -> None:
        super().__init__(latent_dim, (length, vocab_size), hidden=hidden)
        self.length, self.vocab_size = int(length), int(vocab_size)


class TextClassifier(nn.Module):
    """Token ids ``(B, L)`` -> class logits ``(B, num_classes)``: the sum of the tokens'
    embeddings (a bag of words) and one linear layer.

    Args:
        length: L, tokens per sequence.
        vocab_size: V, the vocabulary size (ids in ``[0, V)``).
        num_classes: K, the number of classes (outputs), at least 2.
        embed_dim: E, the embedding size per token (default 32).
    """

    def __init__(self, length: int, vocab_size: int, num_classes: int = 10,
                 embed_dim: int = 32) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        self.length, self.vocab_size, self.embed_dim = _check_positive_dims(
            [length, vocab_size, embed_dim], "length, vocab_size, embed_dim")
        self.in_shape = (self.length,)
        self.num_classes = int(num_classes)
        self.embed = nn.EmbeddingBag(self.vocab_size, self.embed_dim, mode="sum")
        self.head = nn.Linear(self.embed_dim, self.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The bag-of-embeddings vector ``(B, E)``.

        Args:
            x: token ids ``(B, L)``; ids outside ``[0, V)`` are clamped into it.
        """
        check_trailing_shape(x, self.in_shape, type(self).__name__)
        return self.embed(x.long().clamp(0, self.vocab_size - 1))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)``.

        Args:
            x: token ids ``(B, L)``.
        """
        return self.head(self.features(x))
