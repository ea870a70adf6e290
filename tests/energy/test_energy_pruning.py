"""Structured pruning: weight slicing is exact, the greedy follows predicted savings, FLOPs matching."""

import numpy as np
import pytest

from jaxlab.energy import profiler as P
from jaxlab.energy import pruning as PR


def _small_cnn():
    return P.Network((12, 12, 1), (P.Conv(6, 3, 1, "VALID"), P.Act(), P.Pool(2), P.Conv(8, 3, 1, "SAME"), P.Act(),
                                   P.Dense(12), P.Act(), P.Dense(10)), 4, 10)


def _init(net):
    import jax

    return jax.tree_util.tree_map(np.asarray, P.SpecNet(net.layers).init(jax.random.PRNGKey(0), np.zeros(
        (2, *net.input_shape), np.float32))["params"])


def test_apply_keep_equals_zeroing_removed_units():
    net = _small_cnn()
    params = _init(net)
    keep = {0: np.array([0, 2, 5]), 3: np.array([1, 4, 6, 7]), 5: np.array([0, 3, 4, 9, 11])}
    pruned, pp = PR.apply_keep(net, params, keep)
    assert [pruned.layers[i].features for i in PR.prunable_layers(net)] == [3, 4, 5]
    zeroed = {k: {kk: vv.copy() for kk, vv in v.items()} for k, v in params.items()}
    for i, kept in keep.items():
        name = f"{'conv' if isinstance(net.layers[i], P.Conv) else 'dense'}{i}"
        drop = np.setdiff1d(np.arange(net.layers[i].features), kept)
        zeroed[name]["kernel"][..., drop] = 0.0
        zeroed[name]["bias"][drop] = 0.0
    x = np.random.default_rng(0).normal(size=(5, 12, 12, 1)).astype(np.float32)
    full = np.asarray(P.SpecNet(net.layers).apply({"params": zeroed}, x))
    small = np.asarray(P.SpecNet(pruned.layers).apply({"params": pp}, x))
    np.testing.assert_allclose(small, full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not prunable"):
        PR.apply_keep(net, params, {7: np.array([0])})


def test_importance_is_normalised_l1():
    net = _small_cnn()
    params = _init(net)
    imp = PR.unit_importance(net, params)
    k = params["conv3"]["kernel"]
    l1 = np.abs(k).reshape(-1, k.shape[-1]).sum(0)
    np.testing.assert_allclose(imp[3], l1 / l1.mean(), rtol=1e-6)
    assert sorted(imp) == [0, 3, 5]


def test_greedy_prunes_where_predicted_saving_is_and_meets_budget():
    net = _small_cnn()
    imp = {0: np.ones(6), 3: np.ones(8), 5: np.ones(12)}
    predict = lambda n: 1.0 + 10.0 * n.layers[5].features  # only the Dense(12) layer costs anything
    keep, steps = PR.energy_aware_prune(net, imp, predict, budget=0.5, chunk_frac=1 / 12)
    assert {s.layer for s in steps} == {5}
    assert len(keep[0]) == 6 and len(keep[3]) == 8
    assert predict(net._replace(layers=tuple(l._replace(features=len(keep[5])) if i == 5 else l
                                             for i, l in enumerate(net.layers)))) <= 0.5 * predict(net)
    with pytest.raises(ValueError, match="budget"):
        PR.energy_aware_prune(net, imp, predict, budget=1.5)


def test_l1_prune_matches_target_flops():
    net = PR.digits_cnn(batch=8, width=0.5)
    rng = np.random.default_rng(0)
    imp = {i: rng.uniform(0.5, 1.5, net.layers[i].features) for i in PR.prunable_layers(net)}
    target = 0.4 * P.network_train_flops(net)
    keep, frac = PR.l1_prune_to_flops(net, imp, target)
    widths = {i: len(k) for i, k in keep.items()}
    pruned = net._replace(layers=tuple(l._replace(features=widths[i]) if i in widths else l for i, l in enumerate(net.layers)))
    assert abs(P.network_train_flops(pruned) / target - 1) < 0.08
    for i, k in keep.items():  # the lowest-importance units are the ones removed
        assert imp[i][k].min() >= np.sort(imp[i])[len(imp[i]) - len(k)] - 1e-12
