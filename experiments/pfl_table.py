"""A personalised-FL comparison table laid out like GPFL's Table 1, plus accuracy curves.

    python -m experiments.pfl_table --workdir=runs/pfl_table --config=experiments/configs/pfl_table.py:quick
    python -m experiments.pfl_table --workdir=/work/runs/pfl_table_shared --config=experiments/configs/pfl_table.py:shared

Runs every method in ``config.algorithms`` on every dataset spec in ``config.datasets`` for every
seed, each in its own sub-workdir ``<workdir>/<dataset>/<method>/seed<k>`` with the engine's
checkpoints (``jaxlab.fl.engine.Simulation.run``), so rerunning the command resumes every
unfinished run to the same numbers. With ``stages="50,300"`` all methods first reach 50 rounds, then
continue to 300; a table is written at every stage (a run of R rounds logs R+1 evaluations, and the
figures at R are the first R+1 evaluations of a longer run with the same seed, because all
randomness derives from (seed, round, client)).

Outputs: ``table_r<R>.md`` / ``table_r<R>.csv`` (rows = methods, columns = datasets; each cell the
best mean personalised accuracy over rounds 0..R, i.e. PFLlib's reported figure, with the
accuracy at round R beside it; mean +- std over seeds), ``curves_r<R>.png`` (accuracy per round of
all methods, one panel per dataset, mean over seeds), ``summary.json`` and ``config.json``.
``--config.report_only=True`` rebuilds tables and plots from whatever the sub-runs have logged.
Accuracy is PFLlib's sample-weighted mean over all clients' test splits, evaluated before local
training each round with the personal parts of every method.
"""

from __future__ import annotations

import csv
import os
import time

import numpy as np
from ml_collections import ConfigDict

from jaxlab.utils.workdir import Workdir, markdown_table

__all__ = ["run", "tour_row", "parse_dataset", "load_table_data", "make_algorithm", "horizon_figures"]

_CLASSES_PER_CLIENT = {"cifar100": 10, "tiny_imagenet": 20}


def parse_dataset(spec: str) -> ConfigDict:
    """``'shared' | 'pfllib:<dir>' | '<dataset>:dir<alpha>|pat|iid'`` -> fields of experiments.pfl's config."""
    c = ConfigDict({"dataset": spec, "partition": "dir", "alpha": 0.1, "class_per_client": 2, "tag": spec})
    if spec == "shared" or spec.startswith("pfllib:"):
        c.tag = "shared_pfllib_digits_dir0.1" if spec == "shared" else os.path.basename(spec.rstrip("/"))
        return c
    if ":" not in spec:
        raise ValueError(f"dataset spec {spec!r}: use 'shared', 'pfllib:<dir>' or '<dataset>:dir<alpha>|pat|iid'")
    name, part = spec.split(":", 1)
    c.dataset = name
    if part.startswith("dir"):
        try:
            c.alpha = float(part[3:])
        except ValueError:
            raise ValueError(f"dataset spec {spec!r}: 'dir' must be followed by alpha, e.g. dir0.1") from None
        c.partition = "dir"
    elif part == "pat":
        c.partition = "pat"
        c.class_per_client = _CLASSES_PER_CLIENT.get(name, 2)
    elif part == "iid":
        c.partition = "iid"
    else:
        raise ValueError(f"dataset spec {spec!r}: partition must be dir<alpha>, pat or iid")
    c.tag = f"{name}_{part}"
    return c


def load_table_data(config, ds: ConfigDict):
    """The ``FederatedData`` of one dataset spec (the shared partition resolves as in experiments.pfl)."""
    from experiments.pfl import load_federated

    c = ConfigDict({"dataset": ds.dataset, "data_dir": config.data_dir, "num_clients": config.num_clients,
                    "partition": ds.partition, "alpha": ds.alpha, "class_per_client": ds.class_per_client,
                    "balance": config.balance, "partition_seed": config.partition_seed,
                    "batch_size": config.batch_size})
    return load_federated(c)


def make_algorithm(config, name: str, model, data):
    """The registry's algorithm with the config's shared settings and its published hyperparameters."""
    from jaxlab.fl.algorithms import get_algorithm

    hp = dict(config.hparams[name].to_dict()) if name in config.hparams else {}
    if name == "dbe":
        hp["warmup_data"] = data  # DBE's global mean comes from a warm-up on all clients' train sets
    return get_algorithm(name, model, lr=config.lr, batch_size=config.batch_size,
                         local_epochs=config.local_epochs, **hp)


def horizon_figures(rows: list[dict], horizon: int) -> dict | None:
    """Best accuracy over rounds ``0..horizon`` and the accuracy at ``horizon`` (None if not reached)."""
    rows = [r for r in rows if "acc" in r and r["step"] <= horizon]
    if not rows or rows[-1]["step"] != horizon:
        return None
    accs = np.array([r["acc"] for r in rows])
    b = int(np.argmax(accs))
    secs = [r["seconds"] for r in rows if r.get("seconds") is not None]
    return {"best_acc": float(accs[b]), "best_round": int(rows[b]["step"]), "last_acc": float(accs[-1]),
            "last_acc_std": rows[-1].get("acc_std"), "seconds_per_round": float(np.mean(secs)) if secs else None}


def _list(s: str) -> list[str]:
    return [t.strip() for t in str(s).split(",") if t.strip()]


def _stages(config) -> list[int]:
    st = sorted({int(s) for s in _list(config.stages)} | {int(config.rounds)})
    if any(s < 0 for s in st) or st[-1] != int(config.rounds):
        raise ValueError(f"stages={config.stages!r} must be non-negative and <= rounds={config.rounds}")
    return st


def _train_stage(config, datasets, methods, seeds, rounds: int, root: Workdir) -> None:
    from jaxlab.fl.engine import Simulation
    from jaxlab.models import get_model

    for ds in datasets:
        data = load_table_data(config, ds)
        model = get_model(config.model, data.num_classes)
        for name in methods:
            for seed in seeds:
                wd = Workdir(os.path.join(root.path, ds.tag, name, f"seed{seed}"))
                done = [r for r in wd.read_metrics() if "acc" in r and r["step"] == rounds]
                if done:
                    continue
                alg = make_algorithm(config, name, model, data)
                sim = Simulation(alg, data, join_ratio=config.join_ratio, strategy=config.strategy, seed=seed)
                wd.write_config(config, algorithm=name, dataset=ds.to_dict(), seed=seed, rounds=rounds,
                                strategy_resolved=sim.strategy, data=data.name)
                s = sim.run(rounds, workdir=wd, checkpoint_every=config.checkpoint_every)
                wd.write_summary({**s, "algorithm": name, "dataset": ds.tag, "seed": seed})


def _aggregate(root: Workdir, datasets, methods, seeds, horizon: int):
    """Per (dataset, method): mean/std over finished seeds; and mean curves up to ``horizon``."""
    cells, curves = {}, {}
    for ds in datasets:
        for name in methods:
            figs, accs, partial = [], [], []
            for seed in seeds:
                rows = Workdir(os.path.join(root.path, ds.tag, name, f"seed{seed}")).read_metrics()
                f = horizon_figures(rows, horizon)
                if f is not None:
                    figs.append(f)
                    accs.append([r["acc"] for r in rows if "acc" in r and r["step"] <= horizon])
                elif any("acc" in r for r in rows):
                    partial.append([r["acc"] for r in rows if "acc" in r and r["step"] <= horizon])
            if not figs:
                if partial:  # unfinished: say how far it got, and draw what there is
                    n = min(len(a) for a in partial)
                    cells[(ds.tag, name)] = {"incomplete": True, "reached_round": n - 1,
                                             "best_so_far": float(max(max(a[:n]) for a in partial)) * 100}
                    curves[(ds.tag, name)] = np.mean(np.array([a[:n] for a in partial]), axis=0)
                continue
            best = np.array([f["best_acc"] for f in figs]) * 100
            last = np.array([f["last_acc"] for f in figs]) * 100
            sec = [f["seconds_per_round"] for f in figs if f["seconds_per_round"] is not None]
            cells[(ds.tag, name)] = {"best_mean": float(best.mean()), "best_std": float(best.std()),
                                     "last_mean": float(last.mean()), "last_std": float(last.std()),
                                     "best_round": [f["best_round"] for f in figs], "seeds": len(figs),
                                     "seconds_per_round": float(np.mean(sec)) if sec else None}
            curves[(ds.tag, name)] = np.mean(np.array(accs), axis=0)
    return cells, curves


def _write_table(root: Workdir, cells, datasets, methods, horizon: int) -> tuple[str, list[dict]]:
    cols = ["method"] + [ds.tag for ds in datasets]
    rows, flat = [], []
    for name in methods:
        row = {"method": name}
        for ds in datasets:
            c = cells.get((ds.tag, name))
            if c is None:
                row[ds.tag] = "not run"
                continue
            if c.get("incomplete"):
                row[ds.tag] = f"unfinished: at round {c['reached_round']}, best so far {c['best_so_far']:.2f}"
                continue
            row[ds.tag] = (f"{c['best_mean']:.2f}±{c['best_std']:.2f} ({c['last_mean']:.2f}±{c['last_std']:.2f})"
                           if c["seeds"] > 1 else f"{c['best_mean']:.2f} ({c['last_mean']:.2f})")
            flat.append({"dataset": ds.tag, "method": name, "rounds": horizon, **c,
                         "best_round": ",".join(map(str, c["best_round"]))})
        rows.append(row)
    head = (f"Best mean personalised test accuracy (%) over rounds 0..{horizon}, accuracy at round {horizon} "
            "in parentheses; mean±std over seeds when more than one.\n\n")
    table = head + markdown_table(rows, cols)
    root.write_text(f"table_r{horizon}.md", table)
    if flat:
        with open(root.file(f"table_r{horizon}.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(flat[0].keys()))
            w.writeheader()
            w.writerows(flat)
    return table, flat


def _plot(root: Workdir, curves, cells, datasets, methods, horizon: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.2), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for name in methods:
            c = curves.get((ds.tag, name))
            if c is not None:
                unfinished = cells.get((ds.tag, name), {}).get("incomplete")
                ax.plot(np.arange(len(c)), c * 100, label=name + (" (unfinished)" if unfinished else ""), lw=1.2)
        ax.set_title(ds.tag)
        ax.set_xlabel("round")
        ax.set_ylabel("personalised test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = root.file(f"curves_r{horizon}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def check_config(config) -> tuple[list[str], list[int], list[ConfigDict], list[int]]:
    """(methods, seeds, dataset specs, stages) of a table config, or one ValueError naming the bad field,
    before any data are loaded or the workdir is touched (an unknown method used to stop the run only
    when its turn came, after the methods before it had trained). Each (dataset, method, seed) cell is
    checked as the ``experiments.pfl`` config it runs with."""
    from experiments.pfl import check_config as check_cell

    methods = _list(config.algorithms)
    try:
        seeds = [int(s) for s in _list(config.seeds)]
    except ValueError:
        raise ValueError(f"seeds={config.seeds!r}: use comma-separated integers, e.g. '0,1,2'") from None
    datasets = [parse_dataset(s) for s in _list(config.datasets)]
    if not methods or not seeds or not datasets:
        raise ValueError("config.algorithms, config.seeds and config.datasets must each name at least one entry")
    stages = _stages(config)
    for ds in datasets:
        for name in methods:
            for seed in seeds:
                try:
                    check_cell(ConfigDict({
                        "seed": seed, "partition_seed": config.partition_seed, "rounds": stages[-1],
                        "num_clients": config.num_clients, "batch_size": config.batch_size,
                        "local_epochs": config.local_epochs, "checkpoint_every": config.checkpoint_every,
                        "lr": config.lr, "join_ratio": config.join_ratio, "dataset": ds.dataset,
                        "partition": ds.partition, "algorithm": name, "model": config.model,
                        "strategy": config.strategy}))
                except ValueError as e:
                    raise ValueError(f"{e} [table cell: datasets entry {ds.tag!r}, algorithms entry {name!r}, "
                                     f"seeds entry {seed}]") from None
    return methods, seeds, datasets, stages


def run(config, workdir: str) -> dict:
    methods, seeds, datasets, stages = check_config(config)
    root = Workdir(workdir)
    t0 = time.perf_counter()
    if not config.report_only:
        root.write_config(config, stages=stages)
    summary = {"stages": stages, "methods": methods, "datasets": [d.tag for d in datasets], "seeds": seeds,
               "model": config.model, "lr": config.lr, "batch_size": config.batch_size,
               "local_epochs": config.local_epochs, "join_ratio": config.join_ratio,
               "hparams": config.hparams.to_dict(), "tables": {}}
    for horizon in stages:
        if not config.report_only:
            _train_stage(config, datasets, methods, seeds, horizon, root)
        cells, curves = _aggregate(root, datasets, methods, seeds, horizon)
        table, flat = _write_table(root, cells, datasets, methods, horizon)
        if curves:
            _plot(root, curves, cells, datasets, methods, horizon)
        summary["tables"][str(horizon)] = flat
        print(table, flush=True)
        root.write_summary({**summary, "seconds": time.perf_counter() - t0})
    return root.write_summary({**summary, "seconds": time.perf_counter() - t0})


def tour_row(workdir: str) -> dict:
    from experiments.configs.pfl_table import get_config

    s = run(get_config("quick"), workdir)
    final = s["tables"][str(s["stages"][-1])]
    figs = ", ".join(f"{r['method']} {r['best_mean']:.1f}" for r in final)
    return {"system": "pFL table (DBE, GPFL, FedCP vs FedAvg)", "dataset": f"{s['datasets'][0]}, 20 clients",
            "headline": f"best personalised acc (%) after {s['stages'][-1]} rounds: {figs}"}


if __name__ == "__main__":
    from jaxlab.utils.experiment import cli

    cli(run, "pfl_table")
