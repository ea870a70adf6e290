"""Data: the embedded digits, tfds loaders, partitioners and ``FederatedData``.

``load_dataset(name)`` -> ``(x, y, num_classes)`` for ``digits`` (28x28), ``digits8`` (8x8) and
the tfds datasets in :data:`jaxlab.data.tfds.TFDS_DATASETS`. ``make_federated`` partitions them;
``load_pfllib_dir`` reads PFLlib's on-disk partitions.
"""

from __future__ import annotations

import numpy as np

from jaxlab.data.digits import load_digits
from jaxlab.data.federated import (FederatedData, class_histogram, from_client_lists, load_pfllib_dir,
                                   make_federated, partition_table, plot_partition)
from jaxlab.data.partition import SCHEMES, partition, train_test_split_clients
from jaxlab.data.tfds import TFDS_DATASETS, load_tfds

__all__ = ["load_dataset", "DATASETS", "FederatedData", "make_federated", "from_client_lists", "load_pfllib_dir",
           "partition", "train_test_split_clients", "class_histogram", "partition_table", "plot_partition",
           "load_digits", "load_tfds", "SCHEMES"]

DATASETS = ("digits", "digits8") + tuple(TFDS_DATASETS)


def load_dataset(name: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """``(x [n, H, W, C] float32 in [-1, 1], y [n] int32, num_classes)``."""
    if name == "digits":
        x, y = load_digits(28)
        return np.array(x), np.array(y), 10
    if name == "digits8":
        x, y = load_digits(8)
        return np.array(x), np.array(y), 10
    if name in TFDS_DATASETS:
        return load_tfds(name, data_dir=data_dir)
    raise ValueError(f"unknown dataset {name!r}: choose one of {list(DATASETS)}")
