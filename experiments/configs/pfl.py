"""Presets for ``experiments/pfl.py``.

    python -m experiments.pfl --workdir=runs/pfl --config=experiments/configs/pfl.py:quick
    python -m experiments.pfl --workdir=runs/pfl_iid --config=experiments/configs/pfl.py:iid
    python -m experiments.pfl --workdir=runs/pfl_shared --config=experiments/configs/pfl.py:shared --config.algorithm=local
    python -m experiments.pfl --workdir=runs/fmnist --config=experiments/configs/pfl.py:paper   # needs tfds + network

Presets: ``quick`` (embedded digits, Dir(0.1), 20 clients, a minute on 2 CPU cores), ``iid``
(digits iid, lr 0.05, 50 rounds), ``shared`` (the PFLlib-made digits partition in
``../shared/data``), ``paper`` (PFLlib/GPFL setting on tfds fashion_mnist: 20 clients, join ratio 1,
batch 10, one local epoch, lr 0.005, Dir(0.1), 2000 rounds).
"""

from ml_collections import ConfigDict


def base() -> ConfigDict:
    c = ConfigDict()
    c.dataset = "digits"          # digits | digits8 | mnist | fashion_mnist | cifar10 | cifar100 | emnist | pfllib:<dir> | shared
    c.data_dir = ""               # tfds data_dir ("" = tfds default)
    c.partition = "dir"           # iid | pat | dir | exdir
    c.alpha = 0.1
    c.class_per_client = 2
    c.balance = False
    c.num_clients = 20
    c.partition_seed = 1          # PFLlib's generator scripts seed NumPy with 1
    c.model = "cnn"
    c.algorithm = "fedavg"
    c.lr = 0.005
    c.batch_size = 10
    c.local_epochs = 1
    c.rounds = 50
    c.join_ratio = 1.0
    c.strategy = "auto"           # sequential | scan | vmap | sharded | auto
    c.seed = 0
    c.checkpoint_every = 5
    c.hparams = ConfigDict()      # algorithm-specific, e.g. mu for fedprox/ditto
    return c


def get_config(preset: str = "quick") -> ConfigDict:
    c = base()
    if preset == "quick":
        c.rounds = 15
        c.lr = 0.05
    elif preset == "iid":
        c.partition = "iid"
        c.lr = 0.05
        c.rounds = 50
    elif preset == "shared":
        c.dataset = "shared"
        c.rounds = 50
    elif preset == "paper":
        c.dataset = "fashion_mnist"
        c.rounds = 2000
    else:
        raise ValueError(f"unknown preset {preset!r}: choose quick, iid, shared or paper")
    return c
