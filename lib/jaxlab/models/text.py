"""Sequence classifiers: PFLlib's fastText and an LSTM/GRU classifier.

fastText (PFLlib ``fastText``): Embedding(vocab, d) -> mean over tokens -> Dense(d) = base;
Dense(C) = head. Token id ``pad_id`` is excluded from the mean [our choice: PFLlib averages over
padded positions too; set ``mask_padding=False`` for that behaviour].

RNNClassifier: optional Embedding -> stacked LSTM or GRU -> last hidden state = base; Dense(C) = head.
Inputs are int token ids ``[B, T]`` when ``vocab_size`` is set, else float features ``[B, T, F]``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from jaxlab.models.classifier import Classifier
from jaxlab.models.layers import Dense

__all__ = ["FastTextBase", "RNNBase", "make_fasttext", "make_rnn_classifier"]


class FastTextBase(nn.Module):
    vocab_size: int
    hidden: int = 32
    pad_id: int = 0
    mask_padding: bool = True

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        del train
        e = nn.Embed(self.vocab_size, self.hidden, embedding_init=nn.initializers.normal(1.0))(tokens)
        if self.mask_padding:
            m = (tokens != self.pad_id)[..., None].astype(e.dtype)
            z = (e * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        else:
            z = e.mean(1)
        return Dense(self.hidden, name="fc1")(z)


class RNNBase(nn.Module):
    hidden: int = 64
    num_layers: int = 1
    cell: str = "lstm"
    vocab_size: int | None = None
    embed_dim: int = 32

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        if self.vocab_size is not None:
            x = nn.Embed(self.vocab_size, self.embed_dim)(x)
        cells = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}
        if self.cell not in cells:
            raise ValueError(f"cell={self.cell!r}: use 'lstm' or 'gru'")
        for i in range(self.num_layers):
            x = nn.RNN(cells[self.cell](self.hidden), name=f"rnn{i}")(x)
        return x[:, -1]


def make_fasttext(vocab_size: int, num_classes: int, hidden: int = 32) -> Classifier:
    return Classifier(base=FastTextBase(vocab_size, hidden), head=Dense(num_classes))


def make_rnn_classifier(num_classes: int, hidden: int = 64, num_layers: int = 1, cell: str = "lstm",
                        vocab_size: int | None = None, embed_dim: int = 32) -> Classifier:
    return Classifier(base=RNNBase(hidden, num_layers, cell, vocab_size, embed_dim), head=Dense(num_classes))
