"""Multi-layer perceptron: flatten -> [Dense -> ReLU] * len(hidden) = base; Dense(C) = head."""

from __future__ import annotations

from flax import linen as nn

from jaxlab.models.classifier import Classifier
from jaxlab.models.layers import Dense

__all__ = ["MLPBase", "make_mlp"]


class MLPBase(nn.Module):
    hidden: tuple[int, ...] = (200, 200)
    torch_init: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        x = x.reshape(x.shape[0], -1)
        for i, h in enumerate(self.hidden):
            x = nn.relu(Dense(h, torch_init=self.torch_init, name=f"fc{i}")(x))
        return x


def make_mlp(num_classes: int = 10, hidden=(200, 200), torch_init: bool = True) -> Classifier:
    return Classifier(base=MLPBase(tuple(hidden), torch_init), head=Dense(num_classes, torch_init=torch_init))
