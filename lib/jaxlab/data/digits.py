"""The embedded default dataset: scikit-learn's bundled handwritten digits (offline).

1,797 greyscale 8x8 images of 10 classes. ``load_digits(resolution=28)`` upsamples them the way
the shared PFLlib partition was made (pixel/16, bilinear ``scipy.ndimage.zoom`` order 1, clip to
[0, 1]) so MNIST-shaped models apply unchanged; ``normalize=True`` maps [0, 1] to [-1, 1] as
PFLlib's ``(x - 0.5) / 0.5``.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["load_digits", "NUM_CLASSES"]

NUM_CLASSES = 10


@functools.lru_cache(maxsize=8)
def _load(resolution: int, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    x = d.images.astype(np.float32) / 16.0  # [n, 8, 8] in [0, 1]
    if resolution != 8:
        from scipy.ndimage import zoom

        f = resolution / 8.0
        x = np.stack([zoom(img, f, order=1) for img in x]).astype(np.float32)
        x = np.clip(x, 0.0, 1.0)
    if normalize:
        x = (x - 0.5) / 0.5
    x = x[..., None]  # NHWC, one channel
    y = d.target.astype(np.int32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_digits(resolution: int = 28, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(x [1797, r, r, 1] float32, y [1797] int32)``; ``r`` in {8, 28} or any size >= 8.

    The arrays are read-only and cached; copy before modifying.
    """
    if not isinstance(resolution, (int, np.integer)) or resolution < 8:
        raise ValueError(f"resolution={resolution!r}: must be an int >= 8 (8 is native, 28 is MNIST-shaped)")
    return _load(int(resolution), bool(normalize))
