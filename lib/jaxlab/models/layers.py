"""Layers shared by jaxlab's models: a fast CPU convolution and PyTorch-style initialisers.

``Conv`` keeps ``flax.linen.Conv``'s parameter layout (``kernel [kh, kw, c_in, c_out]``, ``bias
[c_out]``) so checkpoints and parameter names are interchangeable, but can compute the convolution
as ``lax.conv_general_dilated_patches`` followed by one matmul (``impl="patches"``). On XLA:CPU
this is ~2.5x faster than the direct convolution for the small kernels of the FL models, because
the matmul hits the tuned GEMM path; on GPU the direct convolution (``impl="xla"``) is the better
choice. ``impl="auto"`` picks by backend at trace time.

PyTorch parity ([our choice] to follow PFLlib where it matters): torch's ``nn.Linear``/``nn.Conv2d``
initialise weights with kaiming-uniform(a=sqrt(5)) and biases with U(+-1/sqrt(fan_in)); both reduce
to U(+-1/sqrt(fan_in)). ``torch_uniform`` reproduces that distribution (not torch's random stream).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

__all__ = ["Conv", "Dense", "torch_uniform", "torch_bias", "max_pool"]


def torch_uniform(fan_in_axes: Sequence[int] | None = None) -> Callable:
    """Initialiser U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in = product of all but the last axis."""

    def init(key, shape, dtype=jnp.float32):
        fan_in = int(np.prod(shape[:-1])) if fan_in_axes is None else int(np.prod([shape[a] for a in fan_in_axes]))
        bound = 1.0 / np.sqrt(max(fan_in, 1))
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_bias(fan_in: int) -> Callable:
    bound = 1.0 / np.sqrt(max(fan_in, 1))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv(nn.Module):
    """2-D convolution, NHWC, with ``nn.Conv``'s parameters. See the module docstring for ``impl``."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: Any = "VALID"
    use_bias: bool = True
    torch_init: bool = True
    impl: str = "auto"

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        cin = x.shape[-1]
        fan_in = kh * kw * cin
        kinit = torch_uniform() if self.torch_init else nn.initializers.lecun_normal()
        kernel = self.param("kernel", kinit, (kh, kw, cin, self.features))
        impl = self.impl
        if impl == "auto":
            impl = "patches" if jax.default_backend() == "cpu" else "xla"
        padding = self.padding
        if isinstance(padding, int):
            padding = [(padding, padding), (padding, padding)]
        dn = ("NHWC", "HWIO", "NHWC")
        if impl == "patches":
            patches = lax.conv_general_dilated_patches(x, (kh, kw), self.strides, padding, dimension_numbers=dn)
            # patch features are ordered (c_in, kh, kw): reorder the HWIO kernel to match
            w = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(fan_in, self.features)
            y = patches @ w
        elif impl == "xla":
            y = lax.conv_general_dilated(x, kernel, self.strides, padding, dimension_numbers=dn)
        else:
            raise ValueError(f"Conv impl={self.impl!r}: use 'patches', 'xla' or 'auto'")
        if self.use_bias:
            binit = torch_bias(fan_in) if self.torch_init else nn.initializers.zeros
            y = y + self.param("bias", binit, (self.features,))
        return y


class Dense(nn.Module):
    """Fully connected layer with ``nn.Dense``'s parameters (``kernel [in, out]``, ``bias [out]``)
    and optional PyTorch-style initialisation."""

    features: int
    use_bias: bool = True
    torch_init: bool = True

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        kinit = torch_uniform() if self.torch_init else nn.initializers.lecun_normal()
        y = x @ self.param("kernel", kinit, (fan_in, self.features))
        if self.use_bias:
            binit = torch_bias(fan_in) if self.torch_init else nn.initializers.zeros
            y = y + self.param("bias", binit, (self.features,))
        return y


def max_pool(x, window: int = 2):
    return nn.max_pool(x, (window, window), strides=(window, window))
