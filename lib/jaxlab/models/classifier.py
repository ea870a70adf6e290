"""The base/head split every jaxlab classifier exposes.

``Classifier(base, head)`` computes ``head(base(x))``. Its parameters are ``{'base': ..., 'head':
...}``, so personalised methods split them by name: ``params['base']`` is shared (FedPer, FedRep,
DBE, ...), ``params['head']`` personal. The two halves can be applied on their own::

    z = model.base.apply({'params': params['base']}, x)        # features
    logits = model.head.apply({'params': params['head']}, z)

Models with BatchNorm (ResNets) also carry ``batch_stats`` with the same split; apply with
``mutable=['batch_stats']`` when ``train=True``.
"""

from __future__ import annotations

from flax import linen as nn

__all__ = ["Classifier"]


class Classifier(nn.Module):
    base: nn.Module
    head: nn.Module

    def __call__(self, x, train: bool = False):
        return self.head(self.base(x, train=train))

    def features(self, x, train: bool = False):
        return self.base(x, train=train)

    def classify(self, z):
        return self.head(z)
