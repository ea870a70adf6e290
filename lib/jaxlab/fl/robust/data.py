"""Data set-up of the robust-FL experiments: the server's root set and Fang et al.'s non-IID split.

``fang_partition`` is the "bias" assignment used by Fang et al. (USENIX Sec'20) and SkyMask
(``utils.assign_data``): clients form ``C`` groups (one per class); a sample of class ``l`` goes to
group ``l`` with probability ``bias`` and to each other group with ``(1 - bias)/(C - 1)``; inside a
group, to a uniformly random client. ``bias = 1/C`` is IID; SkyMask uses 0.5.
"""

from __future__ import annotations

import numpy as np

from jaxlab.data.federated import FederatedData, from_client_lists
from jaxlab.data.partition import train_test_split_clients

__all__ = ["fang_partition", "split_root", "make_fang_federated"]


def fang_partition(labels, num_clients: int, num_classes: int, bias: float = 0.5, seed: int = 0) -> list[np.ndarray]:
    """Index lists ``[num_clients]`` (Fang et al.'s group assignment)."""
    labels = np.asarray(labels)
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias={bias!r} must be in [0, 1]")
    if num_clients < num_classes:
        raise ValueError(f"fang_partition needs num_clients >= num_classes ({num_clients} < {num_classes})")
    rs = np.random.RandomState(seed)
    groups = np.array_split(np.arange(num_clients), num_classes)
    other = (1.0 - bias) / max(num_classes - 1, 1)
    out = [[] for _ in range(num_clients)]
    for i, l in enumerate(labels):
        p = np.full(num_classes, other)
        p[int(l)] = bias
        grp = groups[rs.choice(num_classes, p=p / p.sum())]
        out[int(grp[rs.randint(len(grp))])].append(i)
    return [np.array(o, np.int64) for o in out]


def split_root(x, y, root_size: int = 100, seed: int = 0):
    """Holds out ``root_size`` samples (class-stratified when possible) as the server's clean root
    set; returns ``(root_x, root_y, rest_x, rest_y)``."""
    x, y = np.asarray(x), np.asarray(y)
    rs = np.random.RandomState(seed)
    perm = rs.permutation(len(y))
    classes = np.unique(y)
    per = root_size // len(classes)
    pick = np.concatenate([perm[y[perm] == c][:per] for c in classes])
    if len(pick) < root_size:
        rest = np.setdiff1d(perm, pick, assume_unique=False)
        pick = np.concatenate([pick, rs.permutation(rest)[:root_size - len(pick)]])
    mask = np.zeros(len(y), bool)
    mask[pick] = True
    return x[pick], y[pick], x[~mask], y[~mask]


def make_fang_federated(x, y, num_clients: int, num_classes: int, bias: float = 0.5, seed: int = 0,
                        train_ratio: float = 0.75) -> FederatedData:
    parts = fang_partition(y, num_clients, num_classes, bias, seed)
    if min(len(p) for p in parts) < 4:
        raise ValueError("a client got fewer than 4 samples: use fewer clients or more data")
    tr, te = train_test_split_clients(parts, train_ratio, seed)
    return from_client_lists([(x[i], y[i]) for i in tr], [(x[i], y[i]) for i in te], num_classes,
                             name=f"fang_bias{bias:g}")
