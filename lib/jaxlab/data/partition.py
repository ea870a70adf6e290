"""Federated partitioners with PFLlib's semantics, as pure numpy functions of a seed.

``partition(labels, num_clients, scheme, ...) -> list[np.ndarray]`` returns, for each client, the
indices of the samples it holds; ``train_test_split_clients`` then splits each client 75/25.
PFLlib merges the original train and test sets before partitioning; :func:`make_federated` does
the same. With ``seed=1`` (PFLlib's generator scripts seed NumPy with 1) and the same merged data,
the call sequence on the ``RandomState`` equals PFLlib's on the global generator, so partitions
match PFLlib's bit for bit (tests check this on the shared digits partition).

Schemes:
- ``iid``: PFLlib's non-niid path, i.e. ``pat`` with every class on every client.
- ``pat``: pathological, ``class_per_client`` classes per client; each class's samples go to the
  first ceil(N/C * k) clients that still need classes, in random amounts (or equal if ``balance``).
- ``dir``: per class, proportions ~ Dir(alpha * 1_N), clients already holding >= n/N samples get no
  more, resampled until every client holds >= ``min(batch_size/(1-train_ratio), n/N/2)`` samples.
- ``exdir``: Extended Dirichlet (arXiv 2311.03154): each client first draws ``class_per_client``
  classes (redrawn until every class has >= max(k*N/C/2, 1) clients), then ``dir`` restricted to them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["partition", "train_test_split_clients", "SCHEMES", "least_samples"]

SCHEMES = ("iid", "pat", "dir", "exdir")


def least_samples(n: int, num_clients: int, batch_size: int = 10, train_ratio: float = 0.75) -> int:
    """PFLlib's minimum client size for ``dir``: ``int(min(batch/(1-train_ratio), n/N/2))``."""
    return int(min(batch_size / (1.0 - train_ratio), n / num_clients / 2))


def _check(labels, num_clients, scheme, alpha, class_per_client, num_classes):
    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}: choose one of {SCHEMES}")
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients={num_clients!r}: must be a positive integer")
    if num_clients > len(labels):
        raise ValueError(f"num_clients={num_clients} is more than the {len(labels)} samples: use fewer clients")
    if scheme in ("dir", "exdir") and not (alpha > 0):
        raise ValueError(f"alpha={alpha!r}: the Dirichlet concentration must be > 0 (PFLlib uses 0.1)")
    if scheme in ("pat", "exdir") and not (1 <= class_per_client <= num_classes):
        raise ValueError(f"class_per_client={class_per_client!r}: must be in [1, {num_classes}]")
    if scheme == "exdir" and class_per_client * num_clients < num_classes:
        raise ValueError(f"exdir: {num_clients} clients x class_per_client={class_per_client} cannot cover all "
                         f"{num_classes} classes (every class needs a client); raise class_per_client to >= "
                         f"{-(-num_classes // num_clients)} or use more clients")


def partition(labels: np.ndarray, num_clients: int, scheme: str = "dir", *, alpha: float = 0.1,
              class_per_client: int = 2, balance: bool = False, seed: int | np.random.RandomState = 1, batch_size: int = 10,
              train_ratio: float = 0.75, num_classes: int | None = None, max_tries: int = 10_000) -> list[np.ndarray]:
    """Sample indices per client. ``labels``: [n] int. Returns ``num_clients`` int64 index arrays.

    ``seed`` is an int or a ``RandomState`` to draw from (pass the same one to
    :func:`train_test_split_clients` to reproduce PFLlib's scripts exactly)."""
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    _check(labels, num_clients, scheme, alpha, class_per_client, num_classes)
    rs = seed if isinstance(seed, np.random.RandomState) else np.random.RandomState(seed)
    n = len(labels)
    least = least_samples(n, num_clients, batch_size, train_ratio)
    if scheme == "iid":
        return _pat(labels, num_clients, num_classes, num_classes, balance, least, rs)
    if scheme == "pat":
        return _pat(labels, num_clients, num_classes, class_per_client, balance, least, rs)
    if scheme == "dir":
        allowed = np.ones((num_classes, num_clients), bool)
        return _dirichlet(labels, num_clients, num_classes, alpha, least, allowed, rs, max_tries)
    # exdir
    need = max(class_per_client * num_clients // num_classes // 2, 1)
    for _ in range(max_tries):
        allowed = np.zeros((num_classes, num_clients), bool)
        for i in range(num_clients):
            allowed[rs.choice(range(num_classes), class_per_client, replace=False), i] = True
        if allowed.sum(1).min() >= need:
            break
    else:
        raise RuntimeError(f"exdir: could not give every class >= {need} clients in {max_tries} tries")
    return _dirichlet(labels, num_clients, num_classes, alpha, 10, allowed, rs, max_tries)


def _pat(labels, num_clients, num_classes, k, balance, least, rs):
    idxs = np.arange(len(labels))
    per_class = [idxs[labels == c] for c in range(num_classes)]
    classes_left = [k] * num_clients
    out: dict[int, np.ndarray] = {}
    for c in range(num_classes):
        chosen = [i for i in range(num_clients) if classes_left[i] > 0]
        chosen = chosen[: int(np.ceil(num_clients / num_classes * k))]
        total = len(per_class[c])
        if not chosen or total == 0:
            continue
        per = total / len(chosen)
        if balance:
            counts = [int(per)] * (len(chosen) - 1)
        else:
            low = max(per / 10, least / num_classes)
            if int(low) >= int(per) and len(chosen) > 1:
                raise ValueError(f"class {c} has only {total} samples for {len(chosen)} clients, too few for an "
                                 "unbalanced split: use fewer clients or balance=True")
            counts = rs.randint(low, per, len(chosen) - 1).tolist() if len(chosen) > 1 else []
        counts.append(total - sum(counts))
        start = 0
        for i, cnt in zip(chosen, counts):
            part = per_class[c][start:start + cnt]
            out[i] = part if i not in out else np.append(out[i], part, axis=0)
            start += cnt
            classes_left[i] -= 1
    return [np.asarray(out.get(i, np.zeros(0, np.int64)), np.int64) for i in range(num_clients)]


def _dirichlet(labels, num_clients, num_classes, alpha, least, allowed, rs, max_tries):
    n = len(labels)
    for _ in range(max_tries):
        batches: list[list[int]] = [[] for _ in range(num_clients)]
        for c in range(num_classes):
            idx_c = np.where(labels == c)[0]
            rs.shuffle(idx_c)
            p = rs.dirichlet(np.repeat(alpha, num_clients))
            p = np.array([pj * (len(b) < n / num_clients and allowed[c, j]) for j, (pj, b) in enumerate(zip(p, batches))])
            if p.sum() <= 0:
                continue
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx_c)).astype(int)[:-1]
            batches = [b + part.tolist() for b, part in zip(batches, np.split(idx_c, cuts))]
        if min(len(b) for b in batches) >= least:
            return [np.asarray(b, np.int64) for b in batches]
    raise RuntimeError(f"Dirichlet partition: no draw in {max_tries} gave every client >= {least} samples; "
                       "use fewer clients or a larger alpha")


def train_test_split_clients(indices: list[np.ndarray], train_ratio: float = 0.75, seed: int | np.random.RandomState = 1):
    """Splits each client's indices like sklearn's ``train_test_split(train_size=r, shuffle=True)``.

    Returns ``(train_indices, test_indices)``, lists of arrays. ``seed`` may be the RandomState the
    partitioner used, to continue its stream as PFLlib's scripts do.
    """
    if not 0.0 < train_ratio < 1.0:
        raise ValueError(f"train_ratio={train_ratio!r}: must be in (0, 1)")
    rs = seed if isinstance(seed, np.random.RandomState) else np.random.RandomState(seed)
    train, test = [], []
    for idx in indices:
        m = len(idx)
        n_test = int(np.ceil((1.0 - train_ratio) * m))  # sklearn: test = ceil, train = rest
        n_train = m - n_test
        perm = rs.permutation(m)
        test.append(idx[perm[:n_test]])
        train.append(idx[perm[n_test:n_test + n_train]])
    return train, test
