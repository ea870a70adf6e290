"""Presets for ``experiments/pfl_table.py`` (GPFL Table 1 layout: methods x datasets/partitions).

    python -m experiments.pfl_table --workdir=runs/pfl_table --config=experiments/configs/pfl_table.py:quick
    python -m experiments.pfl_table --workdir=/work/runs/pfl_table_shared --config=experiments/configs/pfl_table.py:shared
    python -m experiments.pfl_table --workdir=/work/runs/pfl_table_shared --config=experiments/configs/pfl_table.py:shared --config.report_only=True
    python -m experiments.pfl_table --workdir=runs/pfl_table_paper --config=experiments/configs/pfl_table.py:paper   # tfds + network

Presets:

- ``quick``: embedded 28x28 digits, 20 clients, Dir(0.1), the CNN, lr 0.05, 8 rounds, four
  methods (a couple of minutes on 2 CPU cores).
- ``shared``: the PFLlib-made digits partition (``pfllib_digits28_dir01_20c`` under
  ``$JAXLAB_SHARED_DATA`` or ``../shared/data`` beside the checkout), official setting: lr 0.005,
  batch 10, one local epoch, join ratio 1; eight methods; reported at 50 and 300 rounds
  (``stages``: every method reaches 50 rounds before any continues to 300).
- ``paper``: GPFL section 4.1: 20 clients, join ratio 1, batch 10, one local epoch, 75/25 split,
  lr 0.005, tfds fashion_mnist and cifar100 under Dir(0.1) and the pathological split (2 / 10
  labels per client), 2000 rounds, 3 seeds.

Datasets are named ``shared``, ``pfllib:<dir>`` or ``<dataset>:<partition>`` with partition
``dir<alpha>``, ``pat`` (PFLlib's classes per client: 2 for 10-class data, 10 for cifar100, 20 for
tiny-imagenet) or ``iid``.

Method hyperparameters are the published ones, each named here: DBE ``kappa=50, momentum=1``
([DBE-repo] run_me.sh); GPFL ``lam=0.01, mu=0.1`` for the 4-layer CNN / MLP, ``lam=1e-4, mu=0``
for ResNet-18 / fastText ([GPFL-repo] run_me.sh, GPFL issue #6); FedCP ``lam=5`` ([FedCP-repo]
run_me.sh). The baselines use their constructors' defaults. ``hparams`` follow ``model`` only when
the config is built (``method_hparams(model)``); after ``--config.model=resnet18`` also pass
``--config.hparams.gpfl.lam=1e-4 --config.hparams.gpfl.mu=0``.
"""

from ml_collections import ConfigDict

ALL_METHODS = "fedavg,local,fedper,fedrep,ditto,dbe,gpfl,fedcp"


def method_hparams(model: str = "cnn") -> ConfigDict:
    """The published hyperparameters of the three methods for ``model``'s backbone."""
    from jaxlab.fl.algorithms.gpfl import OFFICIAL_HPARAMS

    gpfl_lam, gpfl_mu = OFFICIAL_HPARAMS.get(model, OFFICIAL_HPARAMS["cnn"])
    h = ConfigDict()
    h.dbe = ConfigDict({"kappa": 50.0, "momentum": 1.0})
    h.gpfl = ConfigDict({"lam": gpfl_lam, "mu": gpfl_mu})
    h.fedcp = ConfigDict({"lam": 5.0})
    return h


def base() -> ConfigDict:
    c = ConfigDict()
    c.algorithms = ALL_METHODS     # comma-separated registry names
    c.datasets = "shared"          # comma-separated dataset specs (see module docstring)
    c.seeds = "0"                  # comma-separated seeds (each seeds init, sampling and batches)
    c.model = "cnn"
    c.num_clients = 20
    c.partition_seed = 1           # PFLlib's generator scripts seed NumPy with 1
    c.balance = False
    c.data_dir = ""                # tfds data_dir ("" = default)
    c.lr = 0.005
    c.batch_size = 10
    c.local_epochs = 1
    c.join_ratio = 1.0
    c.rounds = 50
    c.stages = ""                  # e.g. "50,300": every method reaches 50 before any goes on; tables at each
    c.strategy = "auto"
    c.checkpoint_every = 10
    c.report_only = False          # only rebuild the table/plot from what the sub-runs logged so far
    c.hparams = method_hparams("cnn")
    return c


def get_config(preset: str = "quick") -> ConfigDict:
    c = base()
    if preset == "quick":
        c.algorithms = "fedavg,dbe,gpfl,fedcp"
        c.datasets = "digits:dir0.1"
        c.lr = 0.05
        c.rounds = 8
        c.checkpoint_every = 4
    elif preset == "shared":
        c.rounds = 300
        c.stages = "50,300"
    elif preset == "paper":
        c.datasets = "fashion_mnist:pat,cifar100:pat,fashion_mnist:dir0.1,cifar100:dir0.1"
        c.rounds = 2000
        c.seeds = "0,1,2"
        c.checkpoint_every = 50
    else:
        raise ValueError(f"unknown preset {preset!r}: choose quick, shared or paper")
    return c
