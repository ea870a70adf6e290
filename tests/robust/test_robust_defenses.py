"""Every aggregation rule against an independent float64 NumPy re-derivation, hand-checkable
cases, invariants, and the bad-input errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxlab.fl.robust import defenses as D

# ---------------------------------------------------------------- float64 numpy references


def np_dists(g):
    return ((g[:, None, :] - g[None, :, :]) ** 2).sum(-1)


def np_krum_scores(g, f, rows=None):
    rows = list(range(len(g))) if rows is None else rows
    d = np_dists(g)
    k = len(rows) - f - 2
    out = {}
    for i in rows:
        others = sorted(d[i, j] for j in rows if j != i)
        out[i] = sum(others[:max(k, 1)])
    return out


def np_krum(g, f):
    s = np_krum_scores(g, f)
    return min(s, key=s.get)


def np_multikrum(g, f):
    s = np_krum_scores(g, f)
    keep = sorted(s, key=s.get)[:len(g) - f]
    return g[keep].mean(0), set(keep)


def np_bulyan(g, f):
    n = len(g)
    theta, beta = n - 2 * f, n - 4 * f
    remaining, chosen = list(range(n)), []
    for _ in range(theta):
        s = np_krum_scores(g, f, remaining)
        i = min(s, key=s.get)
        chosen.append(i)
        remaining.remove(i)
    sel = g[sorted(chosen)]
    med = np.median(sel, 0)
    out = np.empty(g.shape[1])
    for j in range(g.shape[1]):
        idx = np.argsort(np.abs(sel[:, j] - med[j]), kind="stable")[:beta]
        out[j] = sel[idx, j].mean()
    return out, set(chosen)


def np_trimmed(g, f):
    s = np.sort(g, 0)
    return s[f:len(g) - f].mean(0)


def np_geomed(g, w, nu=1e-6, iters=100, ftol=1e-10):
    w = w / w.sum()
    z = w @ g
    obj = np.sum(w * np.linalg.norm(g - z, axis=1))
    for _ in range(iters):
        b = w / np.maximum(nu, np.linalg.norm(g - z, axis=1))
        z = b @ g / b.sum()
        new = np.sum(w * np.linalg.norm(g - z, axis=1))
        if abs(obj - new) <= ftol * new:
            break
        obj = new
    return z


def np_cclip(g, v, tau, iters):
    for _ in range(iters):
        x = g - v
        nrm = np.linalg.norm(x, axis=1, keepdims=True)
        v = v + (x * np.minimum(1, tau / nrm)).mean(0)
    return v


def np_fltrust(g, g0):
    n0 = np.linalg.norm(g0)
    ts = np.maximum([gi @ g0 / (np.linalg.norm(gi) * n0) for gi in g], 0)
    coef = ts * n0 / np.linalg.norm(g, axis=1)
    return (coef[:, None] * g).sum(0) / ts.sum(), ts > 0


def np_foolsgold(hist):
    n = len(hist)
    cs = np.array([[hist[i] @ hist[j] / (np.linalg.norm(hist[i]) * np.linalg.norm(hist[j])) for j in range(n)]
                   for i in range(n)]) - np.eye(n)
    v = cs.max(1)
    for i in range(n):
        for j in range(n):
            if i != j and v[i] < v[j]:
                cs[i, j] *= v[i] / v[j]
    a = np.clip(1 - cs.max(1), 0, 1)
    a = a / a.max()
    a[a == 1] = 0.99
    with np.errstate(divide="ignore"):
        a = np.log(a / (1 - a)) + 0.5
    a[np.isinf(a) | np.isnan(a)] = 0
    return np.clip(a, 0, 1)


def np_dnc_full(g, f):
    mu = g.mean(0)
    c = g - mu
    v = np.linalg.svd(c, full_matrices=False)[2][0]
    s = (c @ v) ** 2
    keep = np.argsort(s)[:len(g) - f]
    return g[keep].mean(0), set(keep.tolist())


@pytest.fixture
def G():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(15, 40))
    g[:3] += rng.normal(scale=4.0, size=(3, 40))  # a few scattered outliers
    return g


def test_mean_matches_weighted_numpy(G):
    w = np.random.default_rng(1).uniform(0.5, 2, len(G))
    out = D.fedavg_mean(jnp.asarray(G, jnp.float32), jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(out.update, (w @ G) / w.sum(), rtol=1e-5, atol=1e-5)


def test_krum_multikrum_bulyan_match_numpy(G):
    g32 = jnp.asarray(G, jnp.float32)
    out = D.krum(g32, f=3)
    assert int(np.argmax(out.benign)) == np_krum(G, 3) and out.benign.sum() == 1
    np.testing.assert_allclose(out.update, G[np_krum(G, 3)], rtol=1e-6)
    mk, keep = np_multikrum(G, 3)
    out = D.multi_krum(g32, f=3)
    assert set(np.flatnonzero(out.benign)) == keep
    np.testing.assert_allclose(out.update, mk, rtol=1e-5, atol=1e-5)
    bu, chosen = np_bulyan(G, 3)
    out = D.bulyan(g32, f=3)
    assert set(np.flatnonzero(out.benign)) == chosen
    np.testing.assert_allclose(out.update, bu, rtol=1e-5, atol=1e-5)


def test_median_trimmed_match_numpy(G):
    g32 = jnp.asarray(G, jnp.float32)
    np.testing.assert_allclose(D.coordinate_median(g32).update, np.median(G, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(D.coordinate_median(g32[:14]).update, np.median(G[:14], 0), rtol=1e-5, atol=1e-6)
    for f in (0, 1, 4, 7):
        np.testing.assert_allclose(D.trimmed_mean(g32, f=f).update, np_trimmed(G, f), rtol=1e-5, atol=1e-5)


def test_geomed_cclip_fltrust_match_numpy(G):
    g32 = jnp.asarray(G, jnp.float32)
    w = np.random.default_rng(2).uniform(0.5, 2, len(G))
    np.testing.assert_allclose(D.geometric_median(g32, jnp.asarray(w, jnp.float32)).update, np_geomed(G, w),
                               rtol=1e-3, atol=1e-4)
    v0 = np.random.default_rng(3).normal(size=40)
    out, v = D.centered_clipping(g32, None, None, jnp.asarray(v0, jnp.float32), tau=2.0, iters=3)
    np.testing.assert_allclose(v, np_cclip(G, v0, 2.0, 3), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.update, v)
    g0 = G[5:].mean(0)
    ref, kept = np_fltrust(G, g0)
    out = D.fltrust(g32, root_update=jnp.asarray(g0, jnp.float32))
    np.testing.assert_allclose(out.update, ref, rtol=1e-4, atol=1e-5)
    assert (np.asarray(out.benign) == kept).all()


def test_foolsgold_matches_numpy_and_keeps_history(G):
    g32 = jnp.asarray(G, jnp.float32)
    prev = np.random.default_rng(4).normal(size=G.shape)
    out, hist = D.foolsgold(g32, None, None, jnp.asarray(prev, jnp.float32))
    a = np_foolsgold(prev + G)
    np.testing.assert_allclose(hist, prev + G, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.update, (a @ G) / a.sum(), rtol=1e-4, atol=1e-4)
    assert (np.asarray(out.benign) == (a > 0)).all()


def test_foolsgold_zeroes_sybils():
    rng = np.random.default_rng(5)
    honest = rng.normal(size=(8, 30))
    sybil = np.tile(rng.normal(size=(1, 30)), (4, 1)) + 1e-4 * rng.normal(size=(4, 30))
    out, _ = D.foolsgold(jnp.asarray(np.vstack([honest, sybil]), jnp.float32))
    assert not np.asarray(out.benign)[8:].any() and np.asarray(out.benign)[:8].all()


def test_dnc_matches_numpy_when_all_coordinates_sampled(G):
    ref, keep = np_dnc_full(G, 3)
    out = D.dnc(jnp.asarray(G, jnp.float32), key=jax.random.PRNGKey(0), f=3, b=10_000)
    assert set(np.flatnonzero(out.benign)) == keep
    np.testing.assert_allclose(out.update, ref, rtol=1e-4, atol=1e-5)


def test_flame_matches_numpy_reference():
    from sklearn.cluster import HDBSCAN

    rng = np.random.default_rng(6)
    base = rng.normal(size=30)
    honest = base + 0.3 * rng.normal(size=(9, 30))
    bad = -3 * base + 0.1 * rng.normal(size=(3, 30))
    g = np.vstack([honest, bad])
    nrm = np.linalg.norm(g, axis=1)
    u = g / nrm[:, None]
    dist = np.maximum(1 - u @ u.T, 0)
    np.fill_diagonal(dist, 0)
    lab = HDBSCAN(metric="precomputed", min_cluster_size=7, min_samples=1, allow_single_cluster=True,
                  copy=True).fit_predict(dist)
    big = np.bincount(lab[lab >= 0]).argmax()
    keep = lab == big
    s = np.median(nrm)
    ref = (g * np.minimum(1, s / nrm)[:, None])[keep].mean(0)
    out = D.flame(jnp.asarray(g, jnp.float32), key=None)
    assert (np.asarray(out.benign) == keep).all() and not keep[9:].any()
    np.testing.assert_allclose(out.update, ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- hand-checkable cases

def test_krum_picks_planted_honest_cluster():
    rng = np.random.default_rng(7)
    honest = 1.0 + 0.01 * rng.normal(size=(7, 20))
    attackers = rng.normal(scale=10.0, size=(3, 20))
    g = jnp.asarray(np.vstack([attackers, honest]), jnp.float32)
    out = D.krum(g, f=3)
    assert 3 <= int(np.argmax(out.benign)) < 10
    mk = D.multi_krum(g, f=3)
    assert set(np.flatnonzero(mk.benign)) == set(range(3, 10))


def test_median_and_trimmed_mean_ignore_f_outliers():
    rng = np.random.default_rng(8)
    honest = rng.uniform(-1, 1, size=(9, 25))
    outl = np.full((4, 25), 1e6)
    g = jnp.asarray(np.vstack([honest, outl]), jnp.float32)
    for agg in (D.coordinate_median(g).update, D.trimmed_mean(g, f=4).update, D.bulyan(jnp.asarray(np.vstack([honest[:7], outl[:1]]), jnp.float32), f=1).update):
        assert np.all(np.abs(np.asarray(agg)) <= 1.0)


# ---------------------------------------------------------------- invariants

@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.floats(-5, 5))
def test_translation_equivariance_and_permutation_invariance(seed, shift):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(11, 13)).astype(np.float32)
    perm = rng.permutation(11)
    for fn in (lambda x: D.coordinate_median(x), lambda x: D.trimmed_mean(x, f=3), lambda x: D.krum(x, f=3)):
        a = np.asarray(fn(jnp.asarray(g)).update)
        np.testing.assert_allclose(fn(jnp.asarray(g + shift)).update, a + shift, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(fn(jnp.asarray(g[perm])).update, a, rtol=1e-5, atol=1e-5)


def test_jit_matches_eager_and_nonfinite_rows_are_flagged_inside_jit(G):
    """One compiled function per rule: equal to the eager call on clean input; on input with a NaN
    row it neither raises nor propagates the NaN, and the row is not kept."""
    g = jnp.asarray(G, jnp.float32)
    w = jnp.full((15,), 1 / 15)
    ctx = {"root_update": g[5:].mean(0), "ids": jnp.arange(15)}
    bad = np.array(G, np.float32)
    bad[4] = np.nan
    for name in D.DEFENSES:
        agg = D.make_aggregator(name, f=3)
        e, _ = agg.apply(g, w, jax.random.PRNGKey(1), agg.init(15, 40), ctx)
        jf = jax.jit(lambda g, w, k, s: agg.apply(g, w, k, s, ctx))
        j, _ = jf(g, w, jax.random.PRNGKey(1), agg.init(15, 40))
        np.testing.assert_allclose(e.update, j.update, rtol=1e-4, atol=1e-5, err_msg=name)
        out, _ = jf(jnp.asarray(bad), w, jax.random.PRNGKey(1), agg.init(15, 40))
        assert np.isfinite(np.asarray(out.update)).all(), name
        if agg.selects or name == "fedavg":
            assert not bool(out.benign[4]), name


# ---------------------------------------------------------------- bad input

def test_bad_inputs_raise_one_clear_error(G):
    g = jnp.asarray(G, jnp.float32)
    with pytest.raises(ValueError, match="2f < n"):
        D.coordinate_median(g, f=8)
    with pytest.raises(ValueError, match="2f < n"):
        D.trimmed_mean(g, f=8)
    with pytest.raises(ValueError, match="2f \\+ 2 < n"):
        D.krum(g, f=7)
    with pytest.raises(ValueError, match="4f \\+ 3"):
        D.bulyan(g, f=4)  # 15 < 4*4+3
    with pytest.raises(ValueError, match="weights"):
        D.fedavg_mean(g, jnp.ones(14))
    with pytest.raises(ValueError, match="n_clients, n_params"):
        D.coordinate_median(g[0])
    with pytest.raises(ValueError, match="root_update"):
        D.fltrust(g, root_update=jnp.ones(39))
    with pytest.raises(TypeError, match="int"):
        D.krum(g, f=1.5)
    with pytest.raises(ValueError, match="unknown defense"):
        D.make_aggregator("krumm")
    bad = np.array(G, np.float32)
    bad[4, 2] = np.nan
    bad[9, 0] = np.inf
    for name in D.DEFENSES:
        agg = D.make_aggregator(name, f=3)
        with pytest.raises(ValueError, match=r"rows \[4, 9\]"):
            agg.apply(jnp.asarray(bad), None, jax.random.PRNGKey(0), agg.init(15, 40), {"root_update": g.mean(0)})


# ---------------------------------------------------------------- fast-path pieces

@pytest.mark.parametrize("ids", [None, (4, 0, 7, 2)])
def test_add_rows_and_gram_matches_float64_update_then_gram_over_chunks(ids):
    """FoolsGold's one-pass history update + Gram, over 2 full column chunks and a tail, with full
    participation and with a subset of clients (rows of a larger state, out of order)."""
    rng = np.random.default_rng(5)
    d = 2 * D._GRAM_CHUNK + 77
    state = rng.standard_normal((9, d)).astype(np.float32)
    n = 9 if ids is None else len(ids)
    g = rng.standard_normal((n, d)).astype(np.float32)
    new_ref = state.astype(np.float64)
    rows = np.arange(9) if ids is None else np.asarray(ids)
    new_ref[rows] += g
    h = new_ref[rows]
    st, gm = jax.jit(D.add_rows_and_gram)(jnp.asarray(state), jnp.asarray(g),
                                          None if ids is None else jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(st), new_ref, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gm), h @ h.T, rtol=1e-4, atol=1e-2)
    # a row with a NaN in its last (tail) chunk and keep=False there: added as zeros, in every chunk
    bad = g.copy()
    bad[1, -1] = np.nan
    keep = np.arange(n) != 1
    new_ref[rows[1]] -= g[1]
    h = new_ref[rows]
    st, gm = jax.jit(D.add_rows_and_gram)(jnp.asarray(state), jnp.asarray(bad),
                                          None if ids is None else jnp.asarray(ids), jnp.asarray(keep))
    np.testing.assert_allclose(np.asarray(st), new_ref, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gm), h @ h.T, rtol=1e-4, atol=1e-2)
    # rows outside ids are untouched
    if ids is not None:
        others = np.setdiff1d(np.arange(9), rows)
        np.testing.assert_array_equal(np.asarray(st)[others], state[others])


def test_row_sq_norms_and_dots_match_float64_over_chunks_with_a_tail():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 2 * D._GRAM_CHUNK + 31)).astype(np.float32)
    v = rng.standard_normal(x.shape[1]).astype(np.float32)
    sq, dots = jax.jit(D.row_sq_norms_and_dots)(jnp.asarray(x), jnp.asarray(v))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(np.asarray(sq), (x64 ** 2).sum(1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dots), x64 @ v.astype(np.float64), rtol=1e-4, atol=1e-2)
    x[3, -2] = np.inf   # in the tail chunk: that row's entries, and only those, are not finite
    sq, dots = D.row_sq_norms_and_dots(jnp.asarray(x), jnp.asarray(v))
    assert np.isfinite(np.asarray(sq)).tolist() == [True, True, True, False, True]
    assert not np.isfinite(np.asarray(dots))[3] and np.isfinite(np.asarray(dots))[[0, 1, 2, 4]].all()


def test_chunked_gram_matches_float64_product_with_a_remainder_chunk():
    """The Gram matrix is accumulated over column chunks (2 full chunks and a tail here)."""
    x = np.random.default_rng(3).standard_normal((7, 2 * D._GRAM_CHUNK + 123)).astype(np.float32)
    ref = x.astype(np.float64) @ x.T.astype(np.float64)
    np.testing.assert_allclose(np.asarray(jax.jit(D.gram)(jnp.asarray(x))), ref, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(np.asarray(D.pairwise_sq_dists(jnp.asarray(x))),
                               np.maximum(np.diag(ref)[:, None] + np.diag(ref)[None, :] - 2 * ref, 0) * (1 - np.eye(7)),
                               rtol=1e-3, atol=1.0)


@pytest.mark.parametrize("finder", ["table", "sort"])
def test_sample_without_replacement_is_distinct_and_uniform(finder, monkeypatch):
    if finder == "sort":  # the repeat finder of large d, forced on a small one
        monkeypatch.setattr(D, "_dup_table_limit", lambda b: 0)
    f = jax.jit(lambda k: D.sample_without_replacement(k, 20, 15))  # many collisions to redraw
    draws = np.stack([np.asarray(f(k)) for k in jax.random.split(jax.random.PRNGKey(0), 400)])
    assert all(len(set(r.tolist())) == 15 for r in draws)
    assert draws.min() >= 0 and draws.max() < 20
    counts = np.bincount(draws.ravel(), minlength=20)       # each index kept with prob 15/20
    expected = 400 * 15 / 20
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected * (1 - 15 / 20))), counts
    with pytest.raises(ValueError, match="b="):
        D.sample_without_replacement(jax.random.PRNGKey(0), 5, 6)


def test_fedavg_flags_a_nan_row_even_with_weight_zero_inside_jit():
    g = np.random.default_rng(0).standard_normal((6, 50)).astype(np.float32)
    g[2, 7] = np.nan
    w = np.array([1, 1, 0, 1, 1, 1], np.float32)
    out = jax.jit(D.fedavg_mean)(jnp.asarray(g), jnp.asarray(w))
    assert np.asarray(out.benign).tolist() == [True, True, False, True, True, True]
    np.testing.assert_allclose(np.asarray(out.update), np.delete(g, 2, 0).mean(0), rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(0, 10_000), st.booleans())
def test_sorting_network_sorts_any_row_count_with_ties(n, seed, ties):
    rng = np.random.default_rng(seed)
    x = (rng.integers(-3, 4, (n, 9)) if ties else rng.standard_normal((n, 9))).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(D.sort_rows(jnp.asarray(x))), np.sort(x, axis=0))


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 40), st.integers(0, 10_000), st.booleans(), st.integers(1, 3))
def test_partition_network_puts_every_value_in_its_rank_group(n, seed, ties, cuts):
    # the trimmed mean's bottom / middle / top network (and other cuts): each group holds exactly
    # the sorted values of its ranks, as a multiset, while fewer compare-exchanges are run
    rng = np.random.default_rng(seed)
    x = (rng.integers(-3, 4, (n, 9)) if ties else rng.standard_normal((n, 9))).astype(np.float32)
    edges = np.sort(rng.integers(0, n + 1, cuts))
    groups = np.searchsorted(edges, np.arange(n), side="right").tolist()
    out = np.stack([np.asarray(r) for r in D._sort_network([jnp.asarray(r) for r in x], groups)])
    ref = np.sort(x, axis=0)
    for gid in set(groups):
        rows = [i for i, g in enumerate(groups) if g == gid]
        np.testing.assert_array_equal(np.sort(out[rows], axis=0), ref[rows])


def test_partition_network_drops_within_group_compare_exchanges():
    # hand-checkable on Batcher's schedule for 4 rows, (0,1) (2,3) (0,2) (1,3) (1,2): split 2 | 2,
    # the last op orders ranks 1 and 2 (different groups), so nothing goes; split 1 | 3 (only the
    # minimum is singled out), (1,2) and then (1,3) are inside group 1 and go, leaving the three
    # ops that find the minimum; one group needs no op at all
    steps = D._network_steps(4)
    assert [s[1:] for s in steps] == [(0, 1), (2, 3), (0, 2), (1, 3), (1, 2)]
    assert len(D._prune_within_groups(steps, 4, [0, 0, 1, 1])) == 5
    assert [s[1:] for s in D._prune_within_groups(steps, 4, [0, 1, 1, 1])] == [(0, 1), (2, 3), (0, 2)]
    assert D._prune_within_groups(steps, 4, [0, 0, 0, 0]) == []
    full = D._network_steps(100)
    pruned = D._prune_within_groups(full, 100, [0] * 20 + [1] * 60 + [2] * 20)
    assert len(pruned) < len(full)


@pytest.mark.parametrize("pair_cos,pair_alpha", [(0.8, 0.0), (0.5, 0.5)])
def test_foolsgold_zeroes_two_alike_honest_clients_next_to_one_unlike_client(pair_cos, pair_alpha):
    """Hand-checkable: h1, h2 with cosine c, u orthogonal to both. v = (c, c, 0); u is pardoned to 0;
    alpha = (1 - c, 1 - c, 1) / 1 -> (1 - c, 1 - c, 0.99) -> logit + 0.5 clipped: for c = 0.8,
    ln(0.2/0.8) + 0.5 < 0 (weight 0, flagged); for c = 0.5, ln(1) + 0.5 = 0.5. This is why Fang's
    split with two clients per dominant class (20 clients, 10 classes) has FoolsGold flag most honest
    clients: every client's most similar history is its group-mate's."""
    h1 = np.array([1.0, 0.0, 0.0])
    h2 = np.array([pair_cos, math.sqrt(1 - pair_cos ** 2), 0.0])
    u = np.array([0.0, 0.0, 1.0])
    g = np.vstack([h1, h2, u])
    out, _ = D.foolsgold(jnp.asarray(g, jnp.float32))
    alpha = np.array([pair_alpha, pair_alpha, 1.0])
    np.testing.assert_allclose(out.update, alpha @ g / alpha.sum(), rtol=1e-5, atol=1e-6)
    assert np.asarray(out.benign).tolist() == [pair_alpha > 0, pair_alpha > 0, True]


def test_aggregator_benchmark_runs_every_rule_at_a_small_size(capsys):
    # the benchmark's NumPy baselines must agree with the rules (max|diff| column) and run at any
    # size a user passes (its DnC baseline once failed for d below its 10,000-coordinate subsample)
    from benchmarks import aggregators as bench
    bench.main(["--n", "12", "--d", "2000", "--f", "2", "--repeats", "1"])
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[3].endswith("x"):
            rows[parts[0]] = float(parts[5])
    assert set(rows) == {"fedavg", "krum", "multikrum", "bulyan", "median", "trimmed_mean", "geomed", "cclip",
                         "fltrust", "flame", "foolsgold", "dnc"}
    for name, diff in rows.items():
        if name not in ("dnc", "flame"):   # random subsamples / noise: not compared, printed as nan
            assert diff < 2e-4, (name, diff)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 21])
def test_reduce_rows_matches_numpy_leading_axis_reductions(n):
    x = np.random.default_rng(n).standard_normal((n, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(D.reduce_rows(jnp.asarray(x))), x.astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(D.reduce_rows(jnp.asarray(x), jnp.maximum)), x.max(0))
    np.testing.assert_array_equal(np.asarray(D.reduce_rows(jnp.asarray(x), jnp.minimum)), x.min(0))
    with pytest.raises(ValueError, match="empty leading axis"):
        D.reduce_rows(jnp.zeros((0, 3)))


# ---------------------------------------------------------------- coordinate-wise kept share


def np_kept_share(g, lo, hi):
    """Loop re-derivation: in every coordinate, order the rows (ties by row index) and mark ranks [lo, hi)."""
    n, d = g.shape
    kept = np.zeros((n, d))
    for j in range(d):
        order = sorted(range(n), key=lambda i: (float(g[i, j]), i))
        for r in range(lo, hi):
            kept[order[r], j] = 1.0
    return kept.mean(1)


@pytest.mark.parametrize("n,f", [(5, 1), (6, 2), (9, 0), (10, 3)])
def test_coordinate_kept_share_matches_a_loop_and_sums_to_the_window(n, f):
    rng = np.random.default_rng(n * 10 + f)
    g = rng.normal(size=(n, 40)).astype(np.float32)
    g[1, :7] = g[0, :7]  # ties, ranked by row index
    for rule in ("trimmed_mean", "median"):
        lo, hi = D.coordinate_window(rule, n, f)
        got = np.asarray(D.coordinate_kept_share(jnp.asarray(g), lo, hi))
        np.testing.assert_allclose(got, np_kept_share(g.astype(np.float64), lo, hi), atol=1e-6)
        assert math.isclose(got.sum(), hi - lo, rel_tol=1e-5)
    jitted = jax.jit(lambda x: D.coordinate_kept_share(x, 1, n - 1))(jnp.asarray(g))
    np.testing.assert_allclose(jitted, np_kept_share(g.astype(np.float64), 1, n - 1), atol=1e-6)


def test_coordinate_kept_share_hand_case_and_bad_input():
    # 5 rows, median window = rank 2 only; rows 3 and 4 are far outliers on every coordinate
    g = np.array([[0.0, 1.0, 2.0, 3.0], [0.1, 1.1, 2.1, 3.1], [0.2, 0.9, 1.9, 2.9],
                  [50.0, 50.0, 50.0, 50.0], [-50.0, -50.0, -50.0, -50.0]], np.float32)
    assert D.coordinate_window("median", 5, None) == (2, 3)
    assert D.coordinate_window("median", 6, None) == (2, 4)
    assert D.coordinate_window("trimmed_mean", 5, 1) == (1, 4)
    assert D.coordinate_window("krum", 5, 1) is None and D.coordinate_window("fedavg", 5, None) is None
    med = np.asarray(D.coordinate_kept_share(g, 2, 3))
    np.testing.assert_allclose(med, [0.75, 0.25, 0.0, 0.0, 0.0])  # medians 0.1, 1, 2, 3; outliers never
    np.testing.assert_allclose(np.asarray(D.coordinate_kept_share(g, 1, 4)), [1, 1, 1, 0, 0])  # trimmed f=1
    with pytest.raises(ValueError, match="2f < n"):
        D.coordinate_window("trimmed_mean", 4, 2)
    with pytest.raises(ValueError, match="rank window"):
        D.coordinate_kept_share(g, 3, 3)
    with pytest.raises(ValueError, match="rank window"):
        D.coordinate_kept_share(g, 0, 6)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        D.coordinate_kept_share(g[0], 0, 1)
