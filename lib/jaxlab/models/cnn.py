"""PFLlib's 4-layer CNN (``FedAvgCNN``), the backbone of DBE, GPFL and FedCP.

conv(c_in->32, k5, valid) -> ReLU -> maxpool2 -> conv(32->64, k5) -> ReLU -> maxpool2 -> flatten
-> Dense(dim->512) -> ReLU  [= base, 512-d features, >= 0]  ->  Dense(512->C)  [= head].
dim is 1024 for 28x28 inputs, 1600 for 32x32 (computed from the input shape here).
Flatten order is NHWC (PyTorch flattens NCHW); this permutes the first Dense layer's input rows
and does not change what the model can represent.
"""

from __future__ import annotations

from flax import linen as nn

from jaxlab.models.classifier import Classifier
from jaxlab.models.layers import Conv, Dense, max_pool

__all__ = ["CNNBase", "make_cnn"]


class CNNBase(nn.Module):
    channels: tuple[int, int] = (32, 64)
    hidden: int = 512
    kernel: int = 5
    torch_init: bool = True
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        for i, c in enumerate(self.channels):
            x = Conv(c, (self.kernel, self.kernel), torch_init=self.torch_init, impl=self.conv_impl, name=f"conv{i}")(x)
            x = max_pool(nn.relu(x), 2)
        x = x.reshape(x.shape[0], -1)
        return nn.relu(Dense(self.hidden, torch_init=self.torch_init, name="fc1")(x))


def make_cnn(num_classes: int = 10, hidden: int = 512, channels=(32, 64), torch_init: bool = True,
             conv_impl: str = "auto") -> Classifier:
    return Classifier(base=CNNBase(tuple(channels), hidden, torch_init=torch_init, conv_impl=conv_impl),
                      head=Dense(num_classes, torch_init=torch_init))
