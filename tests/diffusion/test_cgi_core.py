"""CGI-DM core: masks, contrastive objective, PGD invariants, gradient check, scores and metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxlab.diffusion import cgi, ddpm


# A cheap analytic denoiser so invariants can be checked on many random inputs: eps = tanh(W x + b t).
def _toy_eps(params, x, t, cond):
    b = x.shape[0]
    flat = x.reshape(b, -1)
    h = jnp.tanh(flat @ params["w"] + params["b"] * (t[:, None].astype(x.dtype) / 1000.0))
    return h.reshape(x.shape)


def _toy_params(key, d, scale=0.3, dtype=jnp.float32):
    k1, k2 = jax.random.split(key)
    return {"w": (scale * jax.random.normal(k1, (d, d))).astype(dtype), "b": jax.random.normal(k2, (d,)).astype(dtype)}


SCHED = ddpm.linear_schedule(100)
OBJ = cgi.contrastive_objective(_toy_eps, SCHED, "shared")
OBJ_IND = cgi.contrastive_objective(_toy_eps, SCHED, "independent")


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize("shape,cell", [((8, 8), 1), ((8, 8), 2), ((8, 8), 4), ((16, 16), 2), ((6, 4), 2)])
def test_checkerboard_keeps_exactly_half(shape, cell):
    m = cgi.checkerboard_mask(shape, cell)
    assert m.shape == shape
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert m.sum() == shape[0] * shape[1] // 2
    # cells are constant and neighbouring cells differ
    c = m[::cell, ::cell]
    assert np.array_equal(np.kron(c, np.ones((cell, cell))), m)
    assert np.all(c[1:] != c[:-1]) and np.all(c[:, 1:] != c[:, :-1])


def test_checkerboard_matches_revelio_pattern():
    # Revelio: in each group of 2x2 cells keep top-left and bottom-right
    m = cgi.checkerboard_mask((8, 8), 2)
    blk = m[:4, :4]
    assert blk[:2, :2].all() and blk[2:, 2:].all() and not blk[:2, 2:].any() and not blk[2:, :2].any()


@given(st.sampled_from([1, 2, 4]), st.integers(1, 15), st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_random_blocks_keep_exact_fraction(block, k, seed):
    nb = (8 // block) ** 2
    if k >= nb:
        k = nb - 1
    frac = k / nb
    m = cgi.random_block_mask((8, 8), block, frac, seed)
    assert m.mean() == pytest.approx(frac, abs=1e-12)
    c = m[::block, ::block]
    assert np.array_equal(np.kron(c, np.ones((block, block))), m)


def test_mask_bad_input():
    with pytest.raises(ValueError, match="cell"):
        cgi.checkerboard_mask((8, 8), 3)
    with pytest.raises(ValueError, match="odd number"):
        cgi.checkerboard_mask((6, 6), 2)
    with pytest.raises(ValueError, match="keep_fraction"):
        cgi.random_block_mask((8, 8), 2, 0.3, 0)  # 0.3 * 16 blocks is not an integer


# ---------------------------------------------------------------- contrastive loss
def test_contrastive_loss_zero_for_identical_models():
    key = jax.random.PRNGKey(0)
    p = _toy_params(key, 16)
    x = jax.random.uniform(jax.random.PRNGKey(1), (5, 4, 4, 1), minval=-1, maxval=1)
    v = OBJ({"ft": p, "pre": p}, x, None, jax.random.PRNGKey(2))
    assert v.shape == (5,)
    np.testing.assert_array_equal(np.asarray(v), 0.0)
    # with independent noise the estimator is not identically zero (what the authors' code does)
    v_ind = OBJ_IND({"ft": p, "pre": p}, x, None, jax.random.PRNGKey(2))
    assert np.abs(np.asarray(v_ind)).max() > 1e-4


def test_contrastive_loss_matches_numpy_reference():
    key = jax.random.PRNGKey(3)
    pf, pp = _toy_params(key, 16), _toy_params(jax.random.PRNGKey(4), 16)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 4, 4, 1)).astype(np.float32)
    t = np.array([5, 50, 99], np.int32)
    n1 = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    n2 = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    got = np.asarray(cgi.contrastive_loss(_toy_eps, pf, pp, SCHED, jnp.asarray(x), jnp.asarray(t),
                                          jnp.asarray(n1), jnp.asarray(n2)))
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 100))[t][:, None]

    def mse(p, n):
        xt = np.sqrt(ab) * x.reshape(3, -1).astype(np.float64) + np.sqrt(1 - ab) * n.reshape(3, -1)
        eps = np.tanh(xt @ np.asarray(p["w"], np.float64) + np.asarray(p["b"], np.float64) * t[:, None] / 1000.0)
        return ((eps - n.reshape(3, -1)) ** 2).mean(1)

    np.testing.assert_allclose(got, mse(pf, n1) - mse(pp, n2), rtol=2e-5, atol=2e-6)


def test_objective_bad_noise_mode():
    with pytest.raises(ValueError, match="noise"):
        cgi.contrastive_objective(_toy_eps, SCHED, "correlated")


# ---------------------------------------------------------------- gradient check (float64)
def test_objective_gradient_matches_finite_differences_float64():
    with jax.enable_x64(True):  # local context (jax 0.10: jax.enable_x64; never enabled globally)
        pf = _toy_params(jax.random.PRNGKey(5), 16, 0.5, jnp.float64)
        pp = _toy_params(jax.random.PRNGKey(6), 16, 0.5, jnp.float64)
        sched = ddpm.Schedule(SCHED.betas.astype(jnp.float64),
                              jnp.asarray(np.cumprod(1 - np.linspace(1e-4, 0.02, 100)), jnp.float64))
        obj = cgi.contrastive_objective(_toy_eps, sched, "shared")
        mask = jnp.asarray(cgi.checkerboard_mask((4, 4), 1), jnp.float64)[None, :, :, None]
        x0 = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 4, 4, 1)))
        x_init = x0 * mask
        key = jax.random.PRNGKey(7)

        def f(delta):  # the PGD objective as a function of delta (fixed t/noise draw)
            z = x0 * mask + (x_init + delta) * (1 - mask)
            return jnp.sum(obj({"ft": pf, "pre": pp}, z, None, key))

        d = jnp.asarray(np.random.default_rng(4).normal(size=x0.shape) * 0.1) * (1 - mask)
        g = np.asarray(jax.grad(f)(d))
        assert g.dtype == np.float64
        h = 1e-6
        fd = np.zeros_like(g)
        for idx in np.ndindex(*g.shape):
            e = np.zeros(g.shape)
            e[idx] = h
            fd[idx] = (float(f(d + e)) - float(f(d - e))) / (2 * h)
        unknown = np.broadcast_to(1 - np.asarray(mask), g.shape).astype(bool)
        np.testing.assert_allclose(g[unknown], fd[unknown], rtol=1e-6, atol=1e-9)
        assert np.abs(g[unknown]).max() > 1e-4  # a non-trivial gradient was checked
        np.testing.assert_allclose(g[~unknown], 0.0, atol=1e-12)  # known pixels are not free


# ---------------------------------------------------------------- PGD invariants
@given(st.integers(0, 10_000), st.floats(0.05, 3.0), st.floats(0.01, 2.0), st.sampled_from([1, 2]))
@settings(max_examples=15, deadline=None)
def test_pgd_stays_in_ball_and_keeps_known_region(seed, radius, step, cell):
    rng = np.random.default_rng(seed)
    p_ft = _toy_params(jax.random.PRNGKey(seed), 16, 1.0)
    p_pre = _toy_params(jax.random.PRNGKey(seed + 1), 16, 1.0)
    x0 = jnp.asarray(rng.uniform(-1, 1, (3, 4, 4, 1)), jnp.float32)
    mask = cgi.checkerboard_mask((4, 4), cell)
    x_init = cgi.fill_removed(x0, mask, "blur")
    cfg = cgi.PGDConfig(radius=radius, step_size=step, steps=7)
    x_adv, delta = cgi.pgd(OBJ, {"ft": p_ft, "pre": p_pre}, x0, mask, x_init, jax.random.PRNGKey(seed), cfg)
    x_adv, delta = np.asarray(x_adv), np.asarray(delta)
    m = mask[None, :, :, None].astype(bool)
    mb = np.broadcast_to(m, x_adv.shape)
    np.testing.assert_array_equal(x_adv[mb], np.asarray(x0)[mb])  # known region bit-identical
    assert np.all(delta[mb] == 0)
    norms = np.sqrt((delta.astype(np.float64) ** 2).sum(axis=(1, 2, 3)))
    assert np.all(norms <= radius * (1 + 1e-5))
    assert x_adv.min() >= -1 and x_adv.max() <= 1
    np.testing.assert_allclose(x_adv[~mb], (np.asarray(x_init) + delta)[~mb], atol=1e-6)


def test_pgd_decreases_objective():
    p_ft = _toy_params(jax.random.PRNGKey(0), 16, 1.0)
    p_pre = _toy_params(jax.random.PRNGKey(1), 16, 1.0)
    x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 4, 4, 1)), jnp.float32)
    mask = cgi.checkerboard_mask((4, 4), 1)
    params = {"ft": p_ft, "pre": p_pre}
    # a deterministic objective (fixed t, noise) so that PGD on it must go downhill
    obj = lambda p, x, c, k: OBJ(p, x, c, jax.random.PRNGKey(0))
    x_init = cgi.fill_removed(x0, mask)
    before = np.asarray(obj(params, x_init, None, None)).sum()
    x_adv, _ = cgi.pgd(obj, params, x0, mask, x_init, jax.random.PRNGKey(1), cgi.PGDConfig(2.0, 0.05, 40))
    after = np.asarray(obj(params, x_adv, None, None)).sum()
    assert after < before - 1e-3


def test_latent_recovery_with_identity_vae_equals_pixel_recovery():
    p = {"ft": _toy_params(jax.random.PRNGKey(0), 16), "pre": _toy_params(jax.random.PRNGKey(1), 16)}
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 4, 4, 1)), jnp.float32)
    mask = cgi.checkerboard_mask((4, 4), 2)
    cfg = cgi.PGDConfig(1.0, 0.1, 5)
    a = cgi.recover(OBJ, p, x, mask, jax.random.PRNGKey(2), cfg)
    # a latent space that is a scaled copy: encode = 0.5 x, decode = 2 z; the recovered image must be
    # the decoded latent recovery and keep the known pixels
    enc, dec = (lambda v: 0.5 * v), (lambda z: 2.0 * z)
    b = np.asarray(cgi.recover(OBJ, p, x, mask, jax.random.PRNGKey(2), cfg, vae=(enc, dec)))
    mb = np.broadcast_to(mask[None, :, :, None].astype(bool), b.shape)
    np.testing.assert_allclose(b[mb], np.asarray(x)[mb], atol=1e-6)
    b_id = cgi.recover(OBJ, p, x, mask, jax.random.PRNGKey(2), cfg, vae=(lambda v: v, lambda z: z))
    np.testing.assert_allclose(np.asarray(b_id), np.asarray(a), atol=1e-6)


def test_pgd_config_scales_revelio_radius():
    m = cgi.checkerboard_mask((8, 8), 2)
    cfg = cgi.pgd_config(m, steps=10)
    assert cfg.radius == pytest.approx(0.77 * np.sqrt(32))
    assert cfg.step_size == pytest.approx(cfg.radius / 35)
    # Revelio's own numbers: 70 over 8192 removed entries, step 2
    assert 0.77 * np.sqrt(8192) == pytest.approx(70.0, rel=0.01)


def test_random_perturbation_has_radius_norm_and_keeps_known():
    x = jnp.zeros((3, 8, 8, 1))
    mask = cgi.checkerboard_mask((8, 8), 2)
    cfg = cgi.pgd_config(mask, steps=1, rms=0.3)
    r = np.asarray(cgi.random_perturbation(x, mask, jax.random.PRNGKey(0), cfg))
    mb = np.broadcast_to(mask[None, :, :, None].astype(bool), r.shape)
    assert np.all(r[mb] == 0)
    np.testing.assert_allclose(np.sqrt((r ** 2).sum(axis=(1, 2, 3))), cfg.radius, rtol=1e-5)


# ---------------------------------------------------------------- scores and metrics
def test_ssim_identical_is_one_and_l2_reference():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 8, 8, 1))
    mask = cgi.checkerboard_mask((8, 8), 2)
    np.testing.assert_allclose(cgi.ssim_removed(x, x, mask), 1.0)
    y = x + 0.1 * rng.normal(size=x.shape)
    assert np.all(cgi.ssim_removed(x, y, mask) < 1.0)
    u = 1 - mask[None, :, :, None]
    np.testing.assert_allclose(cgi.neg_l2_removed(x, y, mask), -np.sqrt((((x - y) * u) ** 2).sum((1, 2, 3))))


def test_metrics_against_references():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    pos = np.round(rng.normal(1, 1, 40), 1)
    neg = np.round(rng.normal(0, 1, 50), 1)  # rounding creates ties
    auc = cgi.roc_auc(pos, neg)
    assert auc == pytest.approx(roc_auc_score(np.r_[np.ones(40), np.zeros(50)], np.r_[pos, neg]))
    f, t, _ = cgi.roc_curve(pos, neg)
    assert np.trapezoid(t, f) == pytest.approx(auc)
    # TPR at 0 FP: members above the highest hold-out
    assert cgi.tpr_at_fpr(pos, neg, 0.01) == pytest.approx((pos > neg.max()).mean())
    th = cgi.threshold_at_fpr(neg, 0.1)
    assert (neg >= th).mean() <= 0.1
    a = cgi.accuracy_at(np.array([2.0, 3.0]), np.array([0.0, 1.0]), cgi.best_threshold(np.array([2.0, 3.0]),
                                                                                        np.array([0.0, 1.0])))
    assert a == {"accuracy": 1.0, "tpr": 1.0, "fpr": 0.0}
    with pytest.raises(ValueError, match="NaN"):
        cgi.roc_auc(np.array([np.nan]), np.array([0.0]))


def test_split_max_cosine():
    fo = np.array([[1.0, 0.0], [0.0, 1.0]])
    fr = np.array([[0.0, 2.0], [1.0, 1.0]])
    np.testing.assert_allclose(cgi.split_max_cosine(fo, fr), [np.sqrt(0.5), 1.0])


# ---------------------------------------------------------------- timestep range
def _t_revealing_eps(params, x, t, cond):
    # With x0 = 0, x_t = sqrt(1 - abar_t) * noise, so this predicts the noise exactly plus s * t: the
    # per-example loss is exactly (s * t)^2, which reveals the drawn t.
    ab = SCHED.alphas_cumprod[t][:, None, None, None]
    return x / jnp.sqrt(1.0 - ab) + params["s"] * t[:, None, None, None].astype(x.dtype)


@pytest.mark.parametrize("t_min,t_max", [(1, None), (1, 30), (20, 25)])
def test_objective_draws_t_in_the_stated_range(t_min, t_max):
    x = jnp.zeros((400, 2, 2, 1))
    params = {"ft": {"s": 1.0}, "pre": {"s": 0.0}}
    for obj in (cgi.contrastive_objective(_t_revealing_eps, SCHED, "shared", t_min=t_min, t_max=t_max),
                cgi.finetuned_objective(_t_revealing_eps, SCHED, t_min=t_min, t_max=t_max)):
        t = np.rint(np.sqrt(np.asarray(obj(params, x, None, jax.random.PRNGKey(0)), np.float64))).astype(int)
        hi = SCHED.num_timesteps if t_max is None else t_max
        assert t.min() == t_min and t.max() == hi - 1  # both ends drawn, nothing outside


def test_objective_bad_t_range():
    for kw in ({"t_max": 0}, {"t_max": 101}, {"t_min": 50, "t_max": 50}):
        with pytest.raises(ValueError, match="t range"):
            cgi.contrastive_objective(_toy_eps, SCHED, "shared", **kw)
        with pytest.raises(ValueError, match="t range"):
            cgi.finetuned_objective(_toy_eps, SCHED, **kw)


def test_pre_weight_interpolates_between_finetuned_only_and_contrast():
    """``L_ft - w L_pre`` with the same draws: linear in ``w``; w=1 is the paper's contrast."""
    pf, pp = _toy_params(jax.random.PRNGKey(7), 16), _toy_params(jax.random.PRNGKey(8), 16)
    x = jax.random.uniform(jax.random.PRNGKey(9), (4, 4, 4, 1), minval=-1, maxval=1)
    key = jax.random.PRNGKey(10)
    params = {"ft": pf, "pre": pp}
    v = {w: np.asarray(cgi.contrastive_objective(_toy_eps, SCHED, "shared", pre_weight=w)(params, x, None, key),
                       np.float64) for w in (0.0, 0.3, 1.0)}
    np.testing.assert_allclose(v[1.0], np.asarray(OBJ(params, x, None, key)), rtol=1e-6)
    l_ft, l_pre = v[0.0], v[0.0] - v[1.0]
    assert np.all(l_ft > 0) and np.all(l_pre > 0)
    np.testing.assert_allclose(v[0.3], l_ft - 0.3 * l_pre, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pre_weight"):
        cgi.contrastive_objective(_toy_eps, SCHED, "shared", pre_weight=1.5)
