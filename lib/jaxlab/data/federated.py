"""``FederatedData``: every client's train/test arrays padded to a common length, stacked.

Clients stack on a leading axis so that one compiled client function serves all of them
(pad-and-mask, as FedJAX): ``train_x [C, N_max, ...]``, ``train_y [C, N_max]`` and ``train_n [C]``
(valid prefix length); the same for test. Padding rows are zeros and never used (masks and counts).

Builders: :func:`make_federated` (merge -> partition -> per-client 75/25 split, PFLlib's pipeline),
:func:`from_client_lists`, and :func:`load_pfllib_dir` for PFLlib's on-disk format.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from jaxlab.data.partition import partition, train_test_split_clients

__all__ = ["FederatedData", "make_federated", "from_client_lists", "load_pfllib_dir",
           "class_histogram", "partition_table", "plot_partition"]


@dataclasses.dataclass(frozen=True)
class FederatedData:
    train_x: np.ndarray  # [C, N_train_max, ...]
    train_y: np.ndarray  # [C, N_train_max] int32
    train_n: np.ndarray  # [C] int32
    test_x: np.ndarray   # [C, N_test_max, ...]
    test_y: np.ndarray   # [C, N_test_max] int32
    test_n: np.ndarray   # [C] int32
    num_classes: int
    name: str = "data"

    @property
    def num_clients(self) -> int:
        return int(self.train_n.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[2:])

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-client arrays as a dict (a pytree with a leading client axis)."""
        return {"train_x": self.train_x, "train_y": self.train_y, "train_n": self.train_n,
                "test_x": self.test_x, "test_y": self.test_y, "test_n": self.test_n}

    def client(self, i: int) -> dict[str, np.ndarray]:
        """Client ``i``'s unpadded arrays."""
        return {"train_x": self.train_x[i, : self.train_n[i]], "train_y": self.train_y[i, : self.train_n[i]],
                "test_x": self.test_x[i, : self.test_n[i]], "test_y": self.test_y[i, : self.test_n[i]]}


def _pad_stack(arrs: Sequence[np.ndarray], min_len: int = 1) -> np.ndarray:
    n_max = max(min_len, max(len(a) for a in arrs))
    a0 = arrs[0]
    out = np.zeros((len(arrs), n_max) + tuple(a0.shape[1:]), a0.dtype)
    for i, a in enumerate(arrs):
        out[i, : len(a)] = a
    return out


def from_client_lists(train: Sequence[tuple[np.ndarray, np.ndarray]], test: Sequence[tuple[np.ndarray, np.ndarray]],
                      num_classes: int | None = None, name: str = "data") -> FederatedData:
    """Builds ``FederatedData`` from per-client ``(x, y)`` lists (unpadded)."""
    if len(train) != len(test) or not train:
        raise ValueError(f"need the same, non-zero number of train ({len(train)}) and test ({len(test)}) clients")
    ys = [np.asarray(y) for _, y in train] + [np.asarray(y) for _, y in test]
    if num_classes is None:
        num_classes = int(max(int(y.max()) for y in ys if len(y)) + 1)
    return FederatedData(
        train_x=_pad_stack([np.asarray(x, np.float32) if np.asarray(x).dtype.kind == "f" else np.asarray(x) for x, _ in train]),
        train_y=_pad_stack([np.asarray(y, np.int32) for _, y in train]),
        train_n=np.array([len(y) for _, y in train], np.int32),
        test_x=_pad_stack([np.asarray(x, np.float32) if np.asarray(x).dtype.kind == "f" else np.asarray(x) for x, _ in test]),
        test_y=_pad_stack([np.asarray(y, np.int32) for _, y in test]),
        test_n=np.array([len(y) for _, y in test], np.int32),
        num_classes=int(num_classes), name=name)


def make_federated(x: np.ndarray, y: np.ndarray, num_clients: int = 20, scheme: str = "dir", *,
                   alpha: float = 0.1, class_per_client: int = 2, balance: bool = False, seed: int = 1,
                   train_ratio: float = 0.75, batch_size: int = 10, num_classes: int | None = None,
                   name: str = "data") -> FederatedData:
    """PFLlib's pipeline on already merged ``(x, y)``: partition, then split each client 75/25.

    One ``RandomState(seed)`` drives both steps, as PFLlib's generator scripts do with the global
    NumPy generator, so ``seed=1`` reproduces PFLlib's files exactly.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    rs = np.random.RandomState(seed)
    parts = partition(y, num_clients, scheme, alpha=alpha, class_per_client=class_per_client, balance=balance,
                      seed=rs, batch_size=batch_size, train_ratio=train_ratio, num_classes=num_classes)
    empty = [i for i, p in enumerate(parts) if len(p) < 2]
    if empty:
        raise ValueError(f"clients {empty[:10]} got fewer than 2 samples under scheme={scheme!r}: "
                         "use fewer clients, a larger alpha or more classes per client")
    tr, te = train_test_split_clients(parts, train_ratio, rs)
    nc = int(y.max()) + 1 if num_classes is None else num_classes
    return from_client_lists([(x[i], y[i]) for i in tr], [(x[i], y[i]) for i in te], nc,
                             name=f"{name}/{scheme}" + (f"{alpha:g}" if scheme in ("dir", "exdir") else ""))


def load_pfllib_dir(path: str, channels_last: bool = True) -> FederatedData:
    """Reads PFLlib's on-disk format: ``config.json``, ``train/<i>.npz``, ``test/<i>.npz``.

    Each npz holds ``data`` = {'x': [n, C, H, W] float32, 'y': [n] int64}; images are converted to
    NHWC unless ``channels_last=False``. Client ids are ``0..num_clients-1`` from config.json.
    """
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path!r} is not a PFLlib dataset folder: {cfg_path} is missing "
                                "(expected config.json, train/<i>.npz, test/<i>.npz)")
    with open(cfg_path) as f:
        cfg = json.load(f)
    n = int(cfg["num_clients"])
    lists = {}
    for split in ("train", "test"):
        lists[split] = []
        for i in range(n):
            fp = os.path.join(path, split, f"{i}.npz")
            if not os.path.isfile(fp):
                raise FileNotFoundError(f"PFLlib dataset {path!r}: {split}/{i}.npz is missing")
            with np.load(fp, allow_pickle=True) as z:
                d = z["data"].item()
            xx = np.asarray(d["x"])
            if channels_last and xx.ndim == 4:
                xx = np.transpose(xx, (0, 2, 3, 1))
            lists[split].append((xx, np.asarray(d["y"])))
    return from_client_lists(lists["train"], lists["test"], int(cfg.get("num_classes", 0)) or None,
                             name=os.path.basename(os.path.normpath(path)))


def class_histogram(data: FederatedData) -> np.ndarray:
    """[C, num_classes] int: train+test samples of each class per client."""
    h = np.zeros((data.num_clients, data.num_classes), np.int64)
    for i in range(data.num_clients):
        for y, n in ((data.train_y[i], data.train_n[i]), (data.test_y[i], data.test_n[i])):
            h[i] += np.bincount(y[:n], minlength=data.num_classes)[: data.num_classes]
    return h


def partition_table(data: FederatedData) -> str:
    """Markdown table: one row per client with train/test sizes and the class histogram."""
    h = class_histogram(data)
    cols = ["client", "train", "test"] + [str(c) for c in range(data.num_classes)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i in range(data.num_clients):
        lines.append("| " + " | ".join([str(i), str(data.train_n[i]), str(data.test_n[i])] + [str(v) for v in h[i]]) + " |")
    return "\n".join(lines) + "\n"


def plot_partition(data: FederatedData, path: str) -> str:
    """Bubble plot of the class histogram per client (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = class_histogram(data)
    fig, ax = plt.subplots(figsize=(max(4, data.num_clients * 0.35), max(3, data.num_classes * 0.35)))
    ci, cl = np.nonzero(h)
    ax.scatter(ci, cl, s=h[ci, cl] * 200.0 / max(h.max(), 1), alpha=0.7)
    ax.set_xlabel("client")
    ax.set_ylabel("class")
    ax.set_title(f"{data.name}: samples per class and client")
    ax.set_xticks(range(data.num_clients))
    ax.set_yticks(range(data.num_classes))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
