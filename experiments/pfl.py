"""Federated / personalised FL on the jaxlab engine: any algorithm, dataset, partition, executor.

    python -m experiments.pfl --workdir=runs/pfl --config=experiments/configs/pfl.py:quick
    python -m experiments.pfl --workdir=runs/pfl --config=experiments/configs/pfl.py:shared --config.algorithm=ditto --config.rounds=300

Writes config.json, metrics.jsonl (one line per round: acc, acc_std, auc, test/train loss,
seconds), summary.json (best and last figures), accuracy.png, partition.png/partition.md and orbax
checkpoints; rerunning the same command after an interruption resumes to the same numbers.
"""

from __future__ import annotations

import os

from jaxlab.utils.workdir import Workdir

__all__ = ["run", "build", "tour_row", "load_federated"]


def shared_data_root() -> str:
    from jaxlab.utils.experiment import repo_root

    env = os.environ.get("JAXLAB_SHARED_DATA")
    return env or os.path.join(os.path.dirname(repo_root()), "shared", "data")


def load_federated(config):
    """The ``FederatedData`` a config names."""
    from jaxlab.data import load_dataset, load_pfllib_dir, make_federated

    ds = config.dataset
    if ds == "shared":
        path = os.path.join(shared_data_root(), "pfllib_digits28_dir01_20c")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"the shared PFLlib digits partition is not at {path}: set JAXLAB_SHARED_DATA "
                                    "to the folder that holds pfllib_digits28_dir01_20c")
        return load_pfllib_dir(path)
    if ds.startswith("pfllib:"):
        return load_pfllib_dir(ds.split(":", 1)[1])
    x, y, nc = load_dataset(ds, data_dir=config.data_dir or None)
    return make_federated(x, y, config.num_clients, config.partition, alpha=config.alpha,
                          class_per_client=config.class_per_client, balance=config.balance,
                          seed=config.partition_seed, batch_size=config.batch_size, num_classes=nc, name=ds)


def build(config, data=None):
    """``(Simulation, FederatedData)`` for a config."""
    from jaxlab.fl.algorithms import get_algorithm
    from jaxlab.fl.engine import Simulation
    from jaxlab.models import get_model

    data = data if data is not None else load_federated(config)
    model = get_model(config.model, data.num_classes)
    hp = dict(config.hparams.to_dict()) if hasattr(config.hparams, "to_dict") else dict(config.hparams)
    if config.algorithm == "dbe":
        hp.setdefault("warmup_data", data)  # DBE's global mean comes from a warm-up on every client's data
    alg = get_algorithm(config.algorithm, model, lr=config.lr, batch_size=config.batch_size,
                        local_epochs=config.local_epochs, **hp)
    return Simulation(alg, data, join_ratio=config.join_ratio, strategy=config.strategy, seed=config.seed), data


def plot_accuracy(rows_by_name: dict, path: str, title: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in rows_by_name.items():
        rows = [r for r in rows if "acc" in r]
        ax.plot([r["step"] for r in rows], [r["acc"] for r in rows], label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("personalised test accuracy (sample-weighted)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def check_config(config) -> None:
    """Rejects bad values with one ValueError naming the field, before the data are loaded and before the
    workdir is touched (e.g. checkpoint_every=0 used to crash with a modulo by zero after the first round)."""
    from jaxlab.data import DATASETS
    from jaxlab.data.partition import SCHEMES
    from jaxlab.fl.algorithms import ALGORITHMS
    from jaxlab.fl.executors import STRATEGIES
    from jaxlab.models import MODELS
    from jaxlab.utils.experiment import check_choice, check_ints, check_number

    check_ints(config, "seed", "partition_seed", low=0)
    check_ints(config, "rounds", low=0, why="0 evaluates the initial model only")
    check_ints(config, "num_clients", "batch_size", "local_epochs", "checkpoint_every")
    check_number(config, "lr", 0, low_open=True)
    check_number(config, "join_ratio", 0, 1, low_open=True, why="fraction of the clients in a round")
    if config.dataset != "shared" and not config.dataset.startswith("pfllib:"):
        check_choice(config, "dataset", DATASETS + ("shared", "pfllib:<dir>"))
        check_choice(config, "partition", SCHEMES)
    check_choice(config, "algorithm", sorted(ALGORITHMS))
    check_choice(config, "model", sorted(MODELS))
    check_choice(config, "strategy", STRATEGIES)


def run(config, workdir: str, stop_after: int | None = None) -> dict:
    from jaxlab.data import partition_table, plot_partition

    check_config(config)
    wd = Workdir(workdir)
    sim, data = build(config)
    wd.write_config(config, strategy_resolved=sim.strategy, data=data.name, num_clients=data.num_clients,
                    train_samples=int(data.train_n.sum()), test_samples=int(data.test_n.sum()))
    wd.write_text("partition.md", partition_table(data))
    plot_partition(data, wd.file("partition.png"))
    summary = sim.run(config.rounds, workdir=wd, checkpoint_every=config.checkpoint_every, stop_after=stop_after)
    if stop_after is not None and "stopped_at_round" in summary:
        return summary
    plot_accuracy({config.algorithm: wd.read_metrics()}, wd.file("accuracy.png"),
                  f"{config.algorithm} on {data.name}")
    summary.update(algorithm=config.algorithm, dataset=data.name, model=config.model, seed=config.seed,
                   strategy=sim.strategy, join_ratio=config.join_ratio, lr=config.lr)
    return wd.write_summary(summary)


def tour_row(workdir: str) -> dict:
    from experiments.configs.pfl import get_config

    cfg = get_config("quick")
    s = run(cfg, workdir)
    return {"system": "FL engine (FedAvg)", "dataset": f"{s['dataset']}, 20 clients",
            "headline": f"best acc {s['best_acc']:.3f} (round {s['best_round']}), last {s['last_acc']:.3f}, "
                        f"{s['seconds_per_round']:.2f} s/round ({s['strategy']})"}


if __name__ == "__main__":
    from jaxlab.utils.experiment import cli

    cli(run, "pfl")
