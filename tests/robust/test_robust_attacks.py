"""Every attack against an independent float64 NumPy re-derivation, the Min-Max/Min-Sum constraints
at the bisection tolerance, the knowledge settings and the data attacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from jaxlab.fl.robust import attacks as A

N, F, DIM = 12, 3, 30


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    g = rng.normal(loc=0.3, size=(N, DIM))
    is_mal = np.arange(N) < F
    return g, is_mal


def run(name, g, is_mal, key=0, **kw):
    at = A.make_attack(name, **kw)
    return np.asarray(jax.jit(at.apply)(jnp.asarray(g, jnp.float32), jnp.asarray(is_mal), jax.random.PRNGKey(key)),
                      np.float64)


def test_benign_rows_untouched_for_every_attack(setup):
    g, m = setup
    for name in A.ATTACKS:
        out = run(name, g, m)
        np.testing.assert_allclose(out[~m], g[~m], rtol=1e-6, err_msg=name)


def test_sign_flip_ipm_lie_match_numpy(setup):
    g, m = setup
    ben = g[~m]
    np.testing.assert_allclose(run("sign_flip", g, m)[m], np.tile(-ben.mean(0), (F, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run("ipm", g, m, eps=0.5)[m], np.tile(-0.5 * ben.mean(0), (F, 1)), rtol=1e-5, atol=1e-6)
    s = np.floor(N / 2 + 1) - F
    z = norm.ppf((N - F - s) / (N - F))
    np.testing.assert_allclose(float(A.lie_z(N, F)), z, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(run("lie", g, m)[m], np.tile(ben.mean(0) + z * ben.std(0, ddof=1), (F, 1)),
                               rtol=1e-4, atol=1e-5)


def test_knowledge_own_uses_only_the_attackers_rows(setup):
    g, m = setup
    np.testing.assert_allclose(run("sign_flip", g, m, knowledge="own")[m], np.tile(-g[m].mean(0), (F, 1)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run("sign_flip", g, m, knowledge="all")[m], np.tile(-g.mean(0), (F, 1)),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="knowledge"):
        A.make_attack("lie", knowledge="oracle")


def test_gaussian_moments(setup):
    g, m = setup
    out = run("gaussian", np.zeros((N, 4000)), m, sigma=2.0)
    assert abs(out[m].std() - 2.0) < 0.05 and abs(out[m].mean()) < 0.05


def test_fang_trim_matches_numpy(setup):
    g, m = setup
    key = jax.random.PRNGKey(3)
    b = np.asarray(jax.random.uniform(key, (N, DIM), jnp.float32, 1.0, 2.0), np.float64)
    ben = g[~m]
    mx, mn, s = ben.max(0), ben.min(0), np.sign(ben.sum(0))
    ref = np.empty((N, DIM))
    for i in range(N):
        for j in range(DIM):
            if s[j] > 0:
                ref[i, j] = mn[j] / b[i, j] if mn[j] > 0 else mn[j] * b[i, j]
            else:
                ref[i, j] = mx[j] * b[i, j] if mx[j] > 0 else mx[j] / b[i, j]
    out = np.asarray(A.make_attack("fang_trim").apply(jnp.asarray(g, jnp.float32), jnp.asarray(m), key))
    np.testing.assert_allclose(out[m], ref[m], rtol=1e-5, atol=1e-6)


def np_krum_pick(rows, f):
    d = ((rows[:, None] - rows[None]) ** 2).sum(-1)
    k = len(rows) - f - 2
    sc = [np.sort(np.delete(d[i], i))[:max(k, 1)].sum() for i in range(len(rows))]
    return int(np.argmin(sc))


def test_fang_krum_matches_numpy(setup):
    g, m = setup
    ben = g[~m]
    s = np.sign(ben.sum(0))
    d = np.sqrt(((ben[:, None] - ben[None]) ** 2).sum(-1))
    k = N - F - 2
    near = [np.sort(np.delete(d[i], i))[:k].sum() for i in range(len(ben))]
    lam = min(near) / ((N - 2 * F - 1) * np.sqrt(DIM)) + np.linalg.norm(ben, axis=1).max() / np.sqrt(DIM)
    while lam >= 1e-5:
        rows = np.vstack([np.tile(-lam * s, (F, 1)), ben])
        if np_krum_pick(rows, F) < F:
            break
        lam /= 2
    out = run("fang_krum", g, m)
    np.testing.assert_allclose(out[m], np.tile(-lam * s, (F, 1)), rtol=1e-4, atol=1e-6)


def np_gamma(ben, mu, p, objective, g0=50.0, tol=1e-5):
    d = ((ben[:, None] - ben[None]) ** 2).sum(-1)
    thr = d.max() if objective == "min_max" else d.sum(1).min()
    lam, step, succ = g0, g0, 0.0
    while abs(succ - lam) > tol:
        dist = ((mu - lam * p - ben) ** 2).sum(1)
        ok = dist.max() <= thr if objective == "min_max" else dist.sum() <= thr
        if ok:
            succ = lam
            lam += step / 2
        else:
            lam -= step / 2
        step /= 2
    return succ, thr


@pytest.mark.parametrize("objective", ["min_max", "min_sum"])
@pytest.mark.parametrize("pert", ["unit", "sign", "std"])
def test_min_max_min_sum_match_numpy_and_satisfy_constraint(setup, objective, pert):
    g, m = setup
    ben = g[~m]
    mu = ben.mean(0)
    p = {"unit": mu / np.linalg.norm(mu), "sign": np.sign(mu), "std": ben.std(0, ddof=1)}[pert]
    gam, thr = np_gamma(ben, mu, p, objective)
    out = run(objective, g, m, perturbation=pert)[m][0]
    np.testing.assert_allclose(out, mu - gam * p, rtol=1e-3, atol=1e-4)
    # the constraint holds at gamma and fails a bisection tolerance beyond it (unless gamma is at its cap)
    gam_j = float(np.dot(mu - out, p) / np.dot(p, p))

    def viol(gm):
        dist = ((mu - gm * p - ben) ** 2).sum(1)
        return (dist.max() if objective == "min_max" else dist.sum()) - thr

    assert viol(gam_j) <= 1e-4 * thr
    assert gam_j > 99.9 or viol(gam_j + 1e-3) > -1e-3 * thr


def test_data_attacks():
    x = jnp.zeros((40, 8, 8, 1))
    y = jnp.arange(40) % 10
    at = A.make_attack("label_flip", num_classes=10)
    _, y2 = at.poison_data(x, y, 40, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(y2, 9 - np.arange(40) % 10)
    bd = A.make_attack("backdoor", target=0)
    x3, y3 = bd.poison_data(x, y, 30, jax.random.PRNGKey(1))
    hit = np.asarray(x3[:, -2:, -2:, 0]).min(axis=(1, 2)) == 1.0
    assert 0 < hit[:30].sum() < 30 and not hit[30:].any()  # only valid rows, about half
    assert (np.asarray(y3)[hit] == 0).all() and (np.asarray(y3)[~hit] == np.asarray(y)[~hit]).all()
    g = jnp.ones((10, 5))
    scaled = bd.apply(g, jnp.arange(10) < 2, jax.random.PRNGKey(0))
    np.testing.assert_allclose(scaled[:2], 5.0)  # n / f = 10 / 2
    np.testing.assert_allclose(scaled[2:], 1.0)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown attack"):
        A.make_attack("minmax")
    at = A.make_attack("lie")
    with pytest.raises(ValueError, match="is_mal"):
        at.apply(jnp.ones((5, 3)), jnp.zeros(4, bool), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="NaN"):
        at.apply(jnp.full((5, 3), jnp.nan), jnp.zeros(5, bool), jax.random.PRNGKey(0))
