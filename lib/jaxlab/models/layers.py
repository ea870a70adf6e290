"""Layers shared by jaxlab's models: a fast CPU convolution and PyTorch-style initialisers.

``Conv`` keeps ``flax.linen.Conv``'s parameter layout (``kernel [kh, kw, c_in, c_out]``, ``bias
[c_out]``) so checkpoints and parameter names are interchangeable, but chooses how to compute:

- ``impl="im2col"``: the ``kh*kw`` shifted (strided) slices of the padded input are concatenated
  along channels and multiplied by the kernel reshaped to ``[kh*kw*c_in, c_out]``: one GEMM, and
  a backward pass made of slices and pads only. On XLA:CPU this is ~10x faster than the direct
  convolution for the small kernels of the FL models (measured in a training step of PFLlib's CNN;
  see benchmarks/fl_round.py), because XLA:CPU's convolution and its gradient are far from its
  tuned GEMM path.
- ``impl="patches"``: ``lax.conv_general_dilated_patches`` + one matmul (patches are an identity
  convolution: ~2x faster than ``xla`` on CPU, slower than ``im2col``).
- ``impl="xla"``: ``lax.conv_general_dilated``; the right choice on GPU/TPU (cuDNN).
- ``impl="auto"``: ``im2col`` on CPU, ``xla`` elsewhere (decided at trace time).

``max_pool`` with window == stride is computed as a reshape and a max, whose gradient is a cheap
mask; XLA:CPU's ``select_and_scatter`` (the gradient of ``reduce_window``) is not. With ties the
gradient is shared among the tied inputs (torch gives it to one); after a ReLU the tied values are
almost always zeros whose gradient the ReLU masks anyway.

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
            impl = "im2col" if jax.default_backend() == "cpu" else "xla"
        padding = _explicit_padding(self.padding, x.shape[1:3], (kh, kw), self.strides)
        dn = ("NHWC", "HWIO", "NHWC")
        if impl == "im2col":
            y = im2col(x, (kh, kw), self.strides, padding) @ kernel.reshape(fan_in, self.features)
        elif impl == "patches":
            patches = lax.conv_general_dilated_patches(x, (kh, kw), self.strides, padding, dimension_numbers=dn)
            # patch features are ordered (c_in, kh, kw): reorder the HWIO kernel to match
            w = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(fan_in, self.features)
            y = patches @ w
        elif impl == "xla":
            y = lax.conv_general_dilated(x, kernel, self.strides, padding, dimension_numbers=dn)
        else:
            raise ValueError(f"Conv impl={self.impl!r}: use 'im2col', 'patches', 'xla' or 'auto'")
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


def _explicit_padding(padding, spatial, kernel, strides):
    """Padding as ``[(lo, hi), (lo, hi)]`` from an int, 'VALID', 'SAME' or explicit pairs."""
    if isinstance(padding, int):
        return [(padding, padding), (padding, padding)]
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return [(0, 0), (0, 0)]
        if padding.upper() == "SAME":
            out = []
            for n, k, s in zip(spatial, kernel, strides):
                total = max((-(-n // s) - 1) * s + k - n, 0)
                out.append((total // 2, total - total // 2))
            return out
        raise ValueError(f"padding={padding!r}: use 'VALID', 'SAME', an int or [(lo, hi), (lo, hi)]")
    return [tuple(p) for p in padding]


def im2col(x, kernel: tuple[int, int], strides=(1, 1), padding=((0, 0), (0, 0))):
    """``[N, H', W', kh*kw*C]`` patches ordered (kh, kw, c) built from strided slices (NHWC)."""
    kh, kw = kernel
    sh, sw = strides
    if any(p != (0, 0) for p in padding):
        x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    H, W = x.shape[1], x.shape[2]
    ho, wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    cols = [x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]


def max_pool(x, window: int = 2):
    """``window x window`` max pooling with stride ``window`` (VALID), NHWC."""
    n, h, w, c = x.shape
    h2, w2 = h // window, w // window
    x = x[:, : h2 * window, : w2 * window]
    return x.reshape(n, h2, window, w2, window, c).max(axis=(2, 4))
