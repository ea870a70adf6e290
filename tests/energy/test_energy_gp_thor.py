"""GP kernel/posterior against float64 numpy references; THOR on the simulated device; baselines."""

import math

import numpy as np
import pytest

from jaxlab.energy import baselines as B
from jaxlab.energy import gp as G
from jaxlab.energy import meters as M
from jaxlab.energy import profiler as P
from jaxlab.energy import thor as T


def _matern52_l2(X1, X2, amp, ls):
    d = np.sqrt((((X1[:, None, :] - X2[None, :, :]) / ls) ** 2).sum(-1))
    r = math.sqrt(5.0) * d
    return amp ** 2 * (1 + r + r ** 2 / 3) * np.exp(-r)


def test_kernel_is_ard_matern52_with_euclidean_distance():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 3))
    params = {"log_amp": np.log(1.7), "log_ls": np.log(np.array([0.5, 2.0, 1.3]))}
    K = np.asarray(G.gp_kernel(params)(X, X), np.float64)
    np.testing.assert_allclose(K, _matern52_l2(X, X, 1.7, np.array([0.5, 2.0, 1.3])), rtol=2e-5, atol=1e-5)
    # the L1 default of tinygp would differ off the diagonal
    d1 = np.abs((X[0] - X[1]) / np.array([0.5, 2.0, 1.3])).sum()
    r1 = math.sqrt(5) * d1
    assert abs(K[0, 1] - 1.7 ** 2 * (1 + r1 + r1 ** 2 / 3) * math.exp(-r1)) > 1e-3


def test_posterior_matches_numpy_gp_with_same_hyperparameters():
    rng = np.random.default_rng(1)
    F = np.exp(rng.uniform(0, 3, size=(20, 2)))
    y = np.exp(0.7 * np.log(F[:, 0]) + 0.2 * np.log(F[:, 1]) + 0.05 * rng.normal(size=20))
    gp = G.fit_gp("dense", F, y, steps=50, mean_cols=[0])
    assert gp.params["mean_mask"].tolist() == [1.0] + [0.0] * (G.D_MAX - 1)
    Ft = np.exp(rng.uniform(0, 3, size=(5, 2)))
    mu, var = G.predict_gp(gp, Ft)
    p = {k: np.asarray(v, np.float64) for k, v in gp.params.items()}
    d = F.shape[1]
    X, z = gp.X[: gp.n, :d], gp.z[: gp.n]
    Xt = (np.log(Ft) - gp.x_mu) / gp.x_sd
    amp, ls = math.exp(p["log_amp"]), np.exp(p["log_ls"][:d])
    K = _matern52_l2(X, X, amp, ls) + (math.exp(2 * p["log_noise"]) + 1e-6) * np.eye(len(X))
    Ks = _matern52_l2(Xt, X, amp, ls)
    w = (p["w"] * p["mean_mask"])[:d]
    m0, mt = p["b"] + X @ w, p["b"] + Xt @ w
    ref_mu = mt + Ks @ np.linalg.solve(K, z - m0)
    ref_var = amp ** 2 - np.einsum("ij,ji->i", Ks, np.linalg.solve(K, Ks.T))
    np.testing.assert_allclose(mu, ref_mu * gp.y_sd + gp.y_mu, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(var, np.maximum(ref_var, 0) * gp.y_sd ** 2, rtol=2e-2, atol=1e-4)


def test_gp_fit_interpolates_and_is_uncertain_far_away():
    rng = np.random.default_rng(2)
    F = np.exp(rng.uniform(0, 2, size=(30, 1)))
    y = F[:, 0] ** 1.5 * (1 + 0.3 * np.sin(3 * np.log(F[:, 0])))
    gp = G.fit_gp("act", F, y)
    mu, var_in = G.predict_gp(gp, F[:5])
    np.testing.assert_allclose(np.exp(mu), y[:5], rtol=0.05)
    _, var_far = G.predict_gp(gp, np.array([[math.exp(8.0)]]))
    assert var_far[0] > 10 * var_in.max()


def test_gp_bad_input():
    with pytest.raises(ValueError, match="> 0"):
        G.fit_gp("conv", np.array([[1.0], [0.0]]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=">= 2"):
        G.fit_gp("conv", np.array([[1.0]]), np.array([1.0]))


@pytest.fixture(scope="module")
def sim_setup():
    rng = np.random.default_rng(0)
    space = T.DesignSpace()
    chains = [T.sample_chain(rng, space) for _ in range(50)]
    held = [T.sample_model(rng, ("cnn", "mlp")[i % 2], space) for i in range(20)]
    return chains, held


def _profile(chains, dev, seed=1):
    meter = M.simulated_meter(dev, seed=seed)
    out = []
    for i, c in enumerate(chains):
        out += P.chain_samples(c, [P.measure_network(meter, v).joules for v in P.prefixes(c)], i)
    return out


def _truth(dev, nets):
    return [dev.iteration_cost([p.cost_record() for p in P.place(n)]).joules for n in nets]


@pytest.fixture(scope="module")
def additive_fit(sim_setup):
    chains, held = sim_setup
    dev = M.DeviceModel(gamma=0.0, noise=0.02)
    return dev, T.fit_thor(_profile(chains, dev), steps=200)


def test_thor_recovers_known_total_and_additivity_breaks_as_interaction_grows(sim_setup, additive_fit):
    chains, held = sim_setup
    dev, model = additive_fit
    err0 = T.mape([T.estimate(model, n).total for n in held], _truth(dev, held))
    dev1 = M.DeviceModel(gamma=1.0, noise=0.02)
    model1 = T.fit_thor(_profile(chains, dev1), steps=200)
    err1 = T.mape([T.estimate(model1, n).total for n in held], _truth(dev1, held))
    assert len(held) >= 20 and err0 < 5.0
    assert err1 > 2 * err0 and err1 > 5.0


def test_estimate_band_and_unknown_kind(sim_setup, additive_fit):
    chains, held = sim_setup
    dev, model = additive_fit
    ests = [T.estimate(model, n) for n in held]
    truth = _truth(dev, held)
    inside = np.mean([e.lower <= t <= e.upper for e, t in zip(ests, truth)])
    assert inside >= 0.3, inside  # +-2 std bands are too narrow (calibration reported by the experiment)
    # far outside the profiled design space the band widens
    big = P.Network((28, 28, 3), (P.Conv(256, 7), P.Act(), P.Dense(10)), 256, 10)
    e_big = T.estimate(model, big)
    assert e_big.std / e_big.total > 2 * np.median([e.std / e.total for e in ests])
    assert all(e.per_layer[0][0] == "fixed" and abs(sum(c for _, c in e.per_layer) - e.total) < 1e-12 for e in ests)
    assert all(e.std > 0 and e.lower < e.total < e.upper for e in ests)
    seq = P.Network((8, 16), (P.LSTM(8), P.Dense(10)), 4, 10)
    with pytest.raises(ValueError, match="lstm"):
        T.estimate(model, seq)


def test_active_learning_curve_and_bad_strategy(sim_setup):
    chains, held = sim_setup
    dev = M.DeviceModel(gamma=0.0, noise=0.02)
    per_chain = {}
    meter = M.simulated_meter(dev, seed=1)

    def samples_of(i):
        if i not in per_chain:
            c = chains[i]
            per_chain[i] = P.chain_samples(c, [P.measure_network(meter, v).joules for v in P.prefixes(c)], i)
        return per_chain[i]

    truth = _truth(dev, held)
    ev = lambda m: T.mape([T.estimate(m, n).total for n in held], truth)
    curve = T.active_learning(chains, samples_of, ev, n_init=8, n_max=16, step=8, strategy="variance",
                              fit_kw={"steps": 100})
    assert [c["n_chains"] for c in curve] == [8, 16]
    assert len(set(curve[-1]["chosen"])) == 16
    with pytest.raises(ValueError, match="strategy"):
        T.active_learning(chains, samples_of, ev, n_init=2, n_max=4, step=1, strategy="greedy")


def test_mape_closed_form_and_errors():
    assert T.mape([110.0, 90.0], [100.0, 100.0]) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        T.mape([1.0], [0.0])


def test_flops_linear_recovers_exact_line():
    nets = [P.Network((n,), (P.Dense(m),), 4) for n, m in [(8, 4), (16, 32), (64, 8), (128, 128)]]
    costs = [3e-9 * P.network_train_flops(n) + 0.01 for n in nets]
    fl = B.fit_flops_linear(nets, costs)
    assert fl.a == pytest.approx(3e-9, rel=1e-9) and fl.b == pytest.approx(0.01, rel=1e-9)
    with pytest.raises(ValueError):
        B.fit_flops_linear(nets[:1], costs[:1])


def test_neuralpower_fits_polynomial_layer_costs(sim_setup):
    chains, held = sim_setup
    dev = M.DeviceModel(gamma=0.0, noise=0.0)
    np_model = B.fit_neuralpower(_profile(chains, dev))
    assert set(np_model.degrees.values()) <= {1, 2, 3}
    pred = [B.predict_neuralpower(np_model, n) for n in held]
    assert T.mape(pred, _truth(dev, held)) < 30.0
