"""Real datasets through tensorflow-datasets, merged train+test as PFLlib does.

``load_tfds("fashion_mnist")`` -> ``(x [n, H, W, C] float32 normalised (x-0.5)/0.5, y [n] int32,
num_classes)``. Needs the ``tfds`` extra (``pip install 'jaxlab[tfds]'``) and, the first time, a
network connection (or a prepared ``data_dir``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["load_tfds", "TFDS_DATASETS"]

# jaxlab name -> (tfds name, number of classes)
TFDS_DATASETS = {
    "mnist": ("mnist", 10),
    "fashion_mnist": ("fashion_mnist", 10),
    "cifar10": ("cifar10", 10),
    "cifar100": ("cifar100", 100),
    "emnist": ("emnist/byclass", 62),
    "emnist_letters": ("emnist/letters", 27),
}


def load_tfds(name: str, data_dir: str | None = None, download: bool = True,
              splits: tuple[str, ...] = ("train", "test")) -> tuple[np.ndarray, np.ndarray, int]:
    if name not in TFDS_DATASETS:
        raise ValueError(f"unknown tfds dataset {name!r}: choose one of {sorted(TFDS_DATASETS)}")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(f"dataset {name!r} needs tensorflow-datasets: pip install 'jaxlab[tfds]' "
                          "(or use the embedded 'digits' dataset, which needs nothing)") from e
    tfds_name, num_classes = TFDS_DATASETS[name]
    xs, ys = [], []
    try:
        for split in splits:
            ds = tfds.load(tfds_name, split=split, data_dir=data_dir, download=download, as_supervised=True)
            # iterate in chunks: batch_size=-1 materialises through one huge tensor
            for x, y in tfds.as_numpy(ds.batch(4096)):
                xs.append(np.asarray(x))
                ys.append(np.asarray(y))
    except Exception as e:  # tfds raises many kinds; all mean "the data is not here"
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise RuntimeError(f"could not load tfds dataset {tfds_name!r}: {msg}. This machine may be offline: "
                           "download it once on a networked machine (tfds build / tfds.load) and pass "
                           "data_dir=..., or use the embedded 'digits' dataset") from e
    x = np.concatenate(xs).astype(np.float32) / 255.0
    x = (x - 0.5) / 0.5
    y = np.concatenate(ys).astype(np.int32)
    return x, y, num_classes
