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
    # second term: distance to the benign mean (spec §3, SkyMask); a common offset makes it differ from |g_i|
    lam = min(near) / ((N - 2 * F - 1) * np.sqrt(DIM)) + np.linalg.norm(ben - ben.mean(0), axis=1).max() / np.sqrt(DIM)
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


# ----------------------------------------------------------------------------------------------
# adaptive attack against FLTrust
# ----------------------------------------------------------------------------------------------

def np_fltrust(rows, g0):
    """FLTrust in float64 NumPy (Cao et al.): ReLU-cosine trust, rows rescaled to |g0|."""
    n0 = np.linalg.norm(g0)
    ni = np.linalg.norm(rows, axis=1)
    ts = np.maximum(rows @ g0 / (ni * n0), 0.0)
    return (ts * n0 / ni) @ rows / ts.sum() if ts.sum() > 0 else np.zeros_like(g0)


def np_fltrust_adaptive(g, m, g0, grid):
    """Independent re-derivation: build the candidate row for every grid cosine, run NumPy FLTrust on
    (benign rows + f copies) and keep the row whose aggregate has the smallest s . g' (Fang's
    directional objective); the attack's closed form must pick the same row."""
    ben = g[~m]
    before = np_fltrust(ben, g0)
    s = np.sign(before)
    u0 = g0 / np.linalg.norm(g0)
    s_perp = s - (s @ u0) * u0
    v = -s_perp / np.linalg.norm(s_perp)
    best, best_h = None, np.inf
    for c in np.arange(1, grid + 1) / grid:
        row = np.linalg.norm(g0) * (c * u0 + np.sqrt(1 - c * c) * v)
        h = s @ np_fltrust(np.vstack([np.tile(row, (int(m.sum()), 1)), ben]), g0)
        if h < best_h:
            best, best_h = row, h
    return best, best_h, s, before


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fltrust_adaptive_root_matches_numpy_bruteforce(seed):
    rng = np.random.default_rng(seed)
    n, f, d = 10, [2, 5, 4][seed], 40
    base = rng.normal(size=d)
    g = base + 1.2 * rng.normal(size=(n, d))
    g0 = base + 1.2 * rng.normal(size=d)
    m = np.arange(n) < f
    row, h, s, _ = np_fltrust_adaptive(g, m, g0, grid=200)
    at = A.make_attack("fltrust_adaptive_root", grid=200)
    out = np.asarray(jax.jit(at.apply)(jnp.asarray(g, jnp.float32), jnp.asarray(m), jax.random.PRNGKey(0),
                                       {"root_update": jnp.asarray(g0, jnp.float32)}), np.float64)
    np.testing.assert_allclose(out[~m], g[~m], rtol=1e-6)
    np.testing.assert_allclose(out[m], np.tile(row, (f, 1)), rtol=1e-3, atol=1e-4)
    # the objective the attack reaches, evaluated by the NumPy FLTrust on its own output
    h_out = s @ np_fltrust(np.vstack([out[m], g[~m]]), g0)
    assert h_out <= h + 1e-3 * abs(h)


def test_fltrust_adaptive_hand_checkable():
    """d=2: u0 = e1 and the benign updates lean towards +e2, so s = (1, 1), s_perp = e2 and the
    harmful orthogonal direction is -e2; the row has norm |g0| and cosine c* with g0, and c*
    minimises the closed-form h(c) of the continuous problem (scipy) up to the grid spacing."""
    from scipy.optimize import minimize_scalar

    g0 = np.array([2.0, 0.0])
    ben = np.array([[1.0, 1.0], [1.0, 0.5], [2.0, 1.0]])
    f = 3
    g = np.vstack([np.zeros((f, 2)) + 1.0, ben])
    m = np.arange(len(g)) < f
    out = np.asarray(A.make_attack("fltrust_adaptive_root", grid=2000).apply(
        jnp.asarray(g, jnp.float32), jnp.asarray(m), jax.random.PRNGKey(0), {"root_update": jnp.asarray(g0, jnp.float32)}))
    row = out[0]
    np.testing.assert_allclose(np.linalg.norm(row), 2.0, rtol=1e-5)
    c = row[0] / np.linalg.norm(row)
    assert row[1] < 0  # along -e2, against the benign drift
    cos = ben @ g0 / (np.linalg.norm(ben, axis=1) * 2.0)
    T = cos.sum()
    before = np_fltrust(ben, g0)
    s = np.sign(before)
    np.testing.assert_array_equal(s, [1.0, 1.0])

    def h(cc):  # s . g' in closed form, alpha = 1, beta = 1, |g0| = 2
        return (T * (s @ before) + f * cc * 2.0 * (cc - np.sqrt(1 - cc * cc))) / (T + f * cc)

    res = minimize_scalar(h, bounds=(1e-6, 1.0), method="bounded", options={"xatol": 1e-10})
    assert abs(c - res.x) < 1.5e-3
    np.testing.assert_allclose(h(c), res.fun, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(A.fltrust_adaptive_objective(jnp.float32(c), trust_sum=T, m=f, ref_norm=2.0,
                                                                 s_dot_before=s @ before, alpha=1.0, beta=1.0)),
                               h(c), rtol=1e-5)
    # FLTrust keeps the attackers (positive cosine) and its aggregate's progress along s drops
    assert c > 0
    agg = np_fltrust(out.astype(np.float64), g0)
    np.testing.assert_allclose(s @ agg, h(c), rtol=1e-5)
    assert s @ agg < 0.7 * (s @ before)


def test_fltrust_adaptive_beats_sign_flip_and_lie_on_planted_fltrust():
    """Planted example, 50% attackers: FLTrust zeroes sign-flip (negative cosine) and LIE barely moves
    it; the adaptive attack keeps a positive trust score and reverses the aggregate's direction."""
    from jaxlab.fl.robust.defenses import fltrust

    rng = np.random.default_rng(0)
    n, d = 20, 200
    base = rng.normal(size=d)
    g = (base + 1.5 * rng.normal(size=(n, d))).astype(np.float32)
    g0 = (base + 1.5 * rng.normal(size=d)).astype(np.float32)
    m = np.arange(n) < 10
    ctx = {"root_update": jnp.asarray(g0)}
    s = np.sign(np_fltrust(g[~m].astype(np.float64), g0.astype(np.float64)))
    proj = {}
    for name in ("sign_flip", "lie", "fltrust_adaptive_root"):
        out = A.make_attack(name).apply(jnp.asarray(g), jnp.asarray(m), jax.random.PRNGKey(0), ctx)
        agg = fltrust(out, root_update=jnp.asarray(g0))
        proj[name] = float(s @ np.asarray(agg.update, np.float64))
        if name == "fltrust_adaptive_root":
            assert np.asarray(agg.benign)[m].all()  # the attackers keep TS > 0
    assert proj["fltrust_adaptive_root"] < 0 < min(proj["sign_flip"], proj["lie"])


def test_fltrust_adaptive_knowledge_levels(setup):
    """Without server knowledge the root update in ctx is ignored and the reference is the observed
    mean; the root variant uses ctx['root_update'] and falls back to the mean when ctx has none."""
    g, m = setup
    gj, mj, k = jnp.asarray(g, jnp.float32), jnp.asarray(m), jax.random.PRNGKey(0)
    r = jnp.asarray(np.random.default_rng(5).normal(size=DIM), jnp.float32)
    est = A.make_attack("fltrust_adaptive").apply(gj, mj, k, {"root_update": r})
    est_noctx = A.make_attack("fltrust_adaptive").apply(gj, mj, k)
    np.testing.assert_allclose(est, est_noctx, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(est)[0]), np.linalg.norm(g[~m].mean(0)), rtol=1e-5)
    root = A.make_attack("fltrust_adaptive_root").apply(gj, mj, k, {"root_update": r})
    same = A.make_attack("fltrust_adaptive", server_knowledge=True).apply(gj, mj, k, {"root_update": r})
    np.testing.assert_allclose(root, same, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(root)[0]), float(jnp.linalg.norm(r)), rtol=1e-5)
    assert np.abs(np.asarray(root)[0] - np.asarray(est)[0]).max() > 1e-2
    np.testing.assert_allclose(A.make_attack("fltrust_adaptive_root").apply(gj, mj, k, {"ids": jnp.arange(N)}),
                               est_noctx, rtol=1e-6)


def test_fltrust_adaptive_bad_input(setup):
    g, m = setup
    gj, mj, k = jnp.asarray(g, jnp.float32), jnp.asarray(m), jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="root_update has shape"):
        A.make_attack("fltrust_adaptive_root").apply(gj, mj, k, {"root_update": jnp.ones(DIM + 1)})
    with pytest.raises(ValueError, match="direction"):
        A.make_attack("fltrust_adaptive", direction="up").apply(gj, mj, k)
    with pytest.raises(ValueError, match="grid"):
        A.make_attack("fltrust_adaptive", grid=1).apply(gj, mj, k)
    with pytest.raises(ValueError, match="server_knowledge"):
        A.make_attack("lie", server_knowledge=True)
    with pytest.raises(ValueError, match="server-knowledge variant"):
        A.make_attack("fltrust_adaptive_root", server_knowledge=False)
