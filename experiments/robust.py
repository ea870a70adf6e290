"""SkyMask and the Byzantine-FL baselines under model-poisoning attacks (quick study and tour row).

    python -m experiments.robust --workdir=/tmp/robust --config=experiments/configs/robust.py:quick

Runs every (attack, defense) cell of ``config.attacks x config.defenses`` (and Pill-wrapped attacks
on ``config.pill_defenses``) at ``config.attacker_fraction`` and writes, per cell, the global
model's test accuracy, backdoor attack success rate where relevant, and detection FPR/FNR (summed
over rounds; "n/a" for rules that select nobody). For the coordinate-wise rules (median, trimmed
mean) ``coord_keep_mal`` / ``coord_keep_ben`` give the mean share of an attacker's / an honest
client's coordinates that the rule averaged (inside its rank window), their per-coordinate
counterpart of "kept" (NaN for the other rules). The full matrix and the attacker-fraction sweep
live in ``experiments/robust_matrix.py``, which reuses :func:`setup` and :func:`run_cell`.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np

from jaxlab.data import DATASETS, load_dataset
from jaxlab.data.partition import SCHEMES
from jaxlab.fl.algorithm import data_spec_of
from jaxlab.fl.algorithms.common import init_variables
from jaxlab.fl.robust.attacks import ATTACKS, make_attack
from jaxlab.fl.robust.data import make_fang_federated, split_root
from jaxlab.fl.robust.defenses import DEFENSES, REFERENCES, make_aggregator, max_admissible_f
from jaxlab.fl.robust.fl import backdoor_success, robust_fedavg, root_data, simulate
from jaxlab.fl.robust.flat import flattener
from jaxlab.fl.robust.pill import pill_attack
from jaxlab.fl.robust.skymask import root_loss_fn, skymask_aggregator
from jaxlab.utils.experiment import check_choice, check_ints, check_number
from jaxlab.utils.workdir import Workdir, markdown_table

F_RULES = ("krum", "multikrum", "bulyan", "median", "trimmed_mean", "dnc")


@dataclasses.dataclass
class Setup:
    config: object
    data: object
    root: dict
    model: object
    flat: object
    num_classes: int


def setup(config) -> Setup:
    from jaxlab.data import make_federated
    from jaxlab.models import make_cnn, make_mlp

    x, y, nc = load_dataset(config.dataset, data_dir=config.data_dir or None)
    rx, ry, x2, y2 = split_root(x, y, config.root_size, config.seed)
    if config.partition == "fang":
        data = make_fang_federated(x2, y2, config.num_clients, nc, config.bias, config.seed)
    else:
        data = make_federated(x2, y2, config.num_clients, config.partition, alpha=config.bias, num_classes=nc,
                              seed=config.seed + 1)
    if config.model == "mlp":
        model = make_mlp(nc, hidden=tuple(config.hidden))
    elif config.model == "cnn":
        model = make_cnn(nc, hidden=int(config.hidden[0]), channels=(30, 50))
    else:
        raise ValueError(f"unknown model {config.model!r}: 'mlp' or 'cnn'")
    params, _ = init_variables(model, jax.random.PRNGKey(0), data_spec_of(data))
    return Setup(config, data, root_data(rx, ry), model, flattener(params), nc)


def malicious_mask(n: int, fraction: float) -> np.ndarray:
    """The first ``round(fraction * n)`` clients are attackers (their data are as random as anyone's)."""
    f = int(round(fraction * n))
    mal = np.zeros(n, bool)
    mal[:f] = True
    return mal


def build_defense(s: Setup, name: str, f_true: int):
    """The rule with ``f = min(attackers it expects, the rule's largest admissible f)``.

    ``n`` is the number of updates the rule sees per round: ``floor(num_clients * join_ratio)``
    (the engine's sample size), so cross-device runs configure Krum/Bulyan/... for the clients of
    a round, not for the whole population."""
    n = max(1, int(np.floor(s.config.num_clients * float(s.config.get("join_ratio", 1.0)))))
    if name == "skymask":
        return skymask_aggregator(root_loss_fn(s.model, s.flat.unflatten, s.root["train_x"], s.root["train_y"]),
                                  lr=float(s.config.get("skymask_lr", 1e7))), None
    if name in F_RULES:
        f = min(f_true, max_admissible_f(name, n))
        return make_aggregator(name, f=f), f
    if name == "cclip":
        return make_aggregator(name, tau=s.config.cclip_tau), None
    return make_aggregator(name), None


def run_cell(s: Setup, attack: str, defense: str, fraction: float, pill: bool = False, rounds: int | None = None) -> dict:
    c = s.config
    n = c.num_clients
    mal = malicious_mask(n, fraction if attack != "none" else 0.0)
    f_true = int(mal.sum())
    # with no attack a rule still assumes the attack fraction's f (it cannot know there is none);
    # it expects the fraction of the clients sampled in a round (cross-device: join_ratio < 1)
    n_round = max(1, int(np.floor(n * float(c.get("join_ratio", 1.0)))))
    agg, f_used = build_defense(s, defense, int(round(fraction * n_round)))
    # per-attack hyperparameters from the config (e.g. the adaptive FLTrust attack's direction)
    hp = dict(c.get("attack_hparams", {}).get(attack, {}))
    att = make_attack(attack, knowledge=c.knowledge, num_classes=s.num_classes, **hp)
    if pill:
        att = pill_attack(att, search=c.pill_search, pill_norm=c.pill_norm, tail=c.pill_tail,
                          carrier_mix=c.pill_carrier_mix,
                          benign_quantile=c.pill_benign_quantile, fallback=c.pill_fallback,
                          pill_base=c.pill_base)
    alg = robust_fedavg(s.model, defense=agg, malicious=mal, attack=att, lr=c.lr, batch_size=c.batch_size,
                        local_epochs=c.local_epochs, server_lr=c.server_lr, root=s.root, coordinate_diagnostic=True)
    t0 = time.perf_counter()
    out = simulate(alg, s.data, rounds or c.rounds, seed=c.seed, join_ratio=c.join_ratio, eval_every=c.eval_every)
    row = {"attack": attack, "defense": defense, "pill": bool(pill), "fraction": float(fraction), "f": f_true,
           "f_defense": f_used, "acc": out["acc"], "err": 1.0 - out["acc"],
           "fpr": out["fpr"] if agg.selects else float("nan"), "fnr": out["fnr"] if agg.selects else float("nan"),
           "coord_keep_mal": out["coord_keep_mal"], "coord_keep_ben": out["coord_keep_ben"],
           "seconds": time.perf_counter() - t0}
    if hp:
        row["attack_hparams"] = hp
    if pill:
        row["pill_settings"] = pill_settings(c)
    if attack == "backdoor":
        d = s.data
        sv = out["server_state"]
        row["asr"] = backdoor_success(s.model, sv["params"], sv["model_state"], d.test_x, d.test_y, d.test_n)
    if out["history"] and len(out["history"]) > 1:
        row["history"] = out["history"]
    return row


def pill_settings(c) -> dict:
    """The Pill choices a cell ran with (recorded in every Pill row and in the matrix summary)."""
    return {"search": c.get("pill_search", "max"), "tail": c.get("pill_tail", "unit"),
            "fallback": c.get("pill_fallback", "honest"), "pill_base": c.get("pill_base", "zero"), "carrier_mix": float(c.get("pill_carrier_mix", 0.5)),
            "benign_quantile": float(c.get("pill_benign_quantile", 0.05)), "knowledge": c.get("knowledge", "benign")}


def fmt(v, pct=True):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


RULES = DEFENSES + REFERENCES + ("skymask",)  # the names build_defense accepts


def check_config(config) -> None:
    """Rejects bad values of a robust.py / robust_matrix.py config (one preset file serves both) with one
    ValueError naming the field, before the data are loaded, any cell runs or the workdir is touched."""
    check_ints(config, "seed", "root_size", "eval_every", low=0)
    check_ints(config, "num_clients", "batch_size", "local_epochs", "rounds")
    check_number(config, "lr", 0, low_open=True)
    check_number(config, "server_lr", 0, low_open=True)
    check_number(config, "join_ratio", 0, 1, low_open=True, why="fraction of the clients in a round")
    check_number(config, "attacker_fraction", 0, 1, high_open=True)
    check_number(config, "cclip_tau", 0, low_open=True)
    check_number(config, "skymask_lr", 0, low_open=True)
    check_choice(config, "dataset", DATASETS)
    check_choice(config, "model", ("mlp", "cnn"))
    check_choice(config, "partition", ("fang",) + SCHEMES)
    if config.partition == "fang":
        check_number(config, "bias", 0, 1, why="Fang et al.'s bias: share of a client's data from its own group")
    for field in ("attacks", "pill_attacks", "sweep_attacks", "pill_dose_attacks"):
        check_choice(config, field, ATTACKS)
    for field in ("defenses", "pill_defenses", "sweep_defenses", "pill_dose_defenses"):
        check_choice(config, field, RULES)
    for fr in config.get("fractions", ()):
        if not 0.0 < fr < 1.0:
            raise ValueError(f"fractions has {fr!r}: each attacker fraction must be in (0, 1)")
    for x in config.get("pill_doses", ()):
        if not x >= 0:
            raise ValueError(f"pill_doses has {x!r}: each pill_norm dose must be >= 0")
    # the Pill settings and the attacker knowledge, checked by the Pill constructor itself
    ps = pill_settings(config)
    pill_attack(make_attack("none"), search=ps["search"], tail=ps["tail"], fallback=ps["fallback"],
                pill_base=ps["pill_base"], carrier_mix=ps["carrier_mix"], benign_quantile=ps["benign_quantile"],
                knowledge=ps["knowledge"], pill_norm=config.get("pill_norm", 1.0))


def run(config, workdir) -> dict:
    check_config(config)
    wd = Workdir(workdir)
    wd.write_config(config)
    s = setup(config)
    rows = []
    cells = [(a, d, False) for a in config.attacks for d in config.defenses]
    if ("none", "fedavg", False) not in cells:  # the no-attack FedAvg reference every headline needs
        cells.insert(0, ("none", "fedavg", False))
    cells += [(a, d, True) for a in config.pill_attacks for d in config.pill_defenses]
    for i, (a, d, p) in enumerate(cells):
        row = run_cell(s, a, d, config.attacker_fraction, p)
        wd.log(i, **row)
        rows.append(row)
    table = markdown_table([{**r, "acc": fmt(r["acc"]), "fpr": fmt(r["fpr"]), "fnr": fmt(r["fnr"]),
                             "seconds": f"{r['seconds']:.1f}"} for r in rows],
                           ["attack", "defense", "pill", "f", "f_defense", "acc", "fpr", "fnr", "seconds"])
    wd.write_text("results.md", table)
    base = {r["defense"]: r["acc"] for r in rows if r["attack"] == "none" and not r["pill"]}
    summary = {"dataset": config.dataset, "clients": config.num_clients, "attacker_fraction": config.attacker_fraction,
               "rounds": config.rounds, "model": config.model,
               "cells": {f"{r['attack']}/{r['defense']}{'/pill' if r['pill'] else ''}":
                         {k: r[k] for k in ("acc", "fpr", "fnr") if k in r} for r in rows},
               "no_attack_fedavg_acc": base.get("fedavg")}
    oracle = {r["attack"]: r["acc"] for r in rows if r["defense"] == "oracle" and not r["pill"]}
    if oracle:
        # FedAvg over the benign clients only (a perfect detector, defenses.oracle_mean): what any selecting
        # rule can reach at best; a gap to no-attack FedAvg that the oracle shares is the attackers' missing data
        summary["oracle_acc"] = oracle
        summary["oracle_note"] = ("FedAvg over the truly benign clients (ground truth, not a defense): the best a "
                                  "detector can do; compare a selecting rule with it and with no-attack FedAvg")
    ref = base.get("fedavg")
    if ref is not None:
        attacked = [r for r in rows if r["attack"] != "none" and not r["pill"]]
        worst: dict = {}  # each rule's lowest accuracy under an attack of this run (first one on ties)
        for r in attacked:
            if r["defense"] not in worst or r["acc"] < worst[r["defense"]]["acc"]:
                worst[r["defense"]] = r
        summary["max_drop_vs_no_attack_fedavg"] = {d: {"points": 100 * (ref - r["acc"]), "attack": r["attack"]}
                                                   for d, r in worst.items()}
        sky = {r["attack"]: r for r in attacked if r["defense"] == "skymask"}
        if sky:
            # the SkyMask criterion, per attack: accuracy within 3 points of no-attack FedAvg, FPR and FNR <= 10%
            gaps = {a: 100 * (ref - r["acc"]) for a, r in sky.items()}
            summary["skymask_claim"] = {
                "gap_to_no_attack_fedavg_points": gaps,
                "max_gap_points": max(gaps.values()),
                "max_fpr": max(r["fpr"] for r in sky.values()), "max_fnr": max(r["fnr"] for r in sky.values()),
                "holds": bool(max(gaps.values()) <= 3.0
                              and all(r["fpr"] <= 0.10 and r["fnr"] <= 0.10 for r in sky.values())),
                "criterion": "acc >= no-attack FedAvg - 3 points and FPR, FNR <= 10% under every attack of this run"}
    if config.get("attack_hparams"):
        summary["attack_hparams"] = config.attack_hparams.to_dict()
    wd.write_summary(summary)
    print(table)
    return summary


def tour_row(workdir) -> dict:
    from experiments.configs.robust import get_config

    summ = run(get_config("quick"), workdir)
    cells = summ["cells"]
    parts = [f"no attack FedAvg {100 * cells['none/fedavg']['acc']:.1f}%"]
    for d in ("fedavg", "median", "fltrust", "skymask"):
        cell = cells.get(f"min_max/{d}")
        if cell:
            extra = (f" (FPR {fmt(cell['fpr'])}%, FNR {fmt(cell['fnr'])}%)" if d == "skymask" else "")
            parts.append(f"{d} {100 * cell['acc']:.1f}%{extra}")
    return {"system": "robust (SkyMask)", "dataset": f"digits 8x8, 20 clients, 20% Min-Max attackers",
            "headline": "test acc: " + ", ".join(parts)}


if __name__ == "__main__":
    from jaxlab.utils.experiment import cli

    cli(run, "robust")
