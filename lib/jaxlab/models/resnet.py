"""ResNet-18 (torchvision layout, as PFLlib uses) and ResNet-20 (He et al.'s CIFAR ResNet).

BatchNorm statistics live in the explicit ``batch_stats`` collection. jaxlab's FL algorithms do
NOT average them by default (PFLlib semantics: only ``.parameters()`` are aggregated, issue #260),
so each client keeps its own statistics; see ``jaxlab.fl.algorithms.fedavg``.
Base = everything up to global average pooling (512-d for ResNet-18, 64-d for ResNet-20);
head = the final Dense layer.
"""

from __future__ import annotations

from flax import linen as nn

from jaxlab.models.classifier import Classifier
from jaxlab.models.layers import Conv, Dense

__all__ = ["ResNetBase", "make_resnet18", "make_resnet20"]


class BasicBlock(nn.Module):
    features: int
    stride: int = 1
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
        y = Conv(self.features, (3, 3), (self.stride, self.stride), padding=1, use_bias=False, impl=self.conv_impl, name="conv1")(x)
        y = nn.relu(bn("bn1")(y))
        y = Conv(self.features, (3, 3), padding=1, use_bias=False, impl=self.conv_impl, name="conv2")(y)
        y = bn("bn2")(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = Conv(self.features, (1, 1), (self.stride, self.stride), use_bias=False, impl=self.conv_impl, name="down_conv")(x)
            x = bn("down_bn")(x)
        return nn.relu(x + y)


class ResNetBase(nn.Module):
    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 maxpool (torchvision); "cifar": 3x3/1 conv
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.stem == "imagenet":
            x = Conv(self.widths[0], (7, 7), (2, 2), padding=3, use_bias=False, impl=self.conv_impl, name="stem_conv")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        elif self.stem == "cifar":
            x = Conv(self.widths[0], (3, 3), padding=1, use_bias=False, impl=self.conv_impl, name="stem_conv")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="stem_bn")(x))
        else:
            raise ValueError(f"stem={self.stem!r}: use 'imagenet' or 'cifar'")
        for s, (n, w) in enumerate(zip(self.stage_sizes, self.widths)):
            for b in range(n):
                stride = 2 if (b == 0 and s > 0) else 1
                x = BasicBlock(w, stride, self.conv_impl, name=f"stage{s}_block{b}")(x, train)
        return x.mean(axis=(1, 2))


def make_resnet18(num_classes: int = 10, stem: str = "imagenet", conv_impl: str = "auto") -> Classifier:
    return Classifier(base=ResNetBase((2, 2, 2, 2), (64, 128, 256, 512), stem, conv_impl), head=Dense(num_classes))


def make_resnet20(num_classes: int = 10, conv_impl: str = "auto") -> Classifier:
    return Classifier(base=ResNetBase((3, 3, 3), (16, 32, 64), "cifar", conv_impl), head=Dense(num_classes))
