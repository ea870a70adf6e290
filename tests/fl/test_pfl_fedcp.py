"""FedCP: loss (CPN, two heads, biased multi-bandwidth MMD) and gradient against a float64 numpy
re-derivation; evaluation depends on its PRNG key; the context comes from the personal head before
the new global head is installed; head/CPN reach only the clients that trained; executors agree and
resume is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.fl.algorithm import data_spec_of, tree_index, tree_stack
from jaxlab.fl.algorithms.fedcp import ConditionalPolicy, fedcp, fedcp_loss, head_context, mmd_rbf
from jaxlab.models import get_model
from tests.fl.pfl_helpers import check_executors_and_resume, flatten_float64, numeric_grad, tiny_data, tiny_model





def np_mmd(a, b, bws=(10.0, 15.0, 20.0, 50.0)):
    """Direct pairwise squared distances (no Gram-matrix trick), biased estimator."""
    k = lambda p, q: sum(np.exp(-((p[:, None, :] - q[None, :, :]) ** 2).sum(-1) / (2 * s)) for s in bws)
    return np.mean(k(a, a) + k(b, b) - 2 * k(a, b))


def np_fedcp_loss(t, x, y, head_g, base_bar, ctx, gumbel, lam, tau=1.0):
    base = lambda bp: np.maximum(x.reshape(len(x), -1) @ bp["fc0"]["kernel"] + bp["fc0"]["bias"], 0.0)
    h, h_bar = base(t["base"]), base(base_bar)
    u = h * (ctx / np.linalg.norm(ctx))
    c = t["cpn"]
    a = u @ c["dense"]["kernel"] + c["dense"]["bias"]
    a = (a - a.mean(1, keepdims=True)) / np.sqrt(a.var(1, keepdims=True) + 1e-5) * c["norm"]["scale"] + c["norm"]["bias"]
    a = np.maximum(a, 0.0).reshape(len(x), 2, -1)
    e = np.exp((a + gumbel) / tau - ((a + gumbel) / tau).max(1, keepdims=True))
    w = e / e.sum(1, keepdims=True)
    r, s = w[:, 0], w[:, 1]
    out = (h * r) @ t["head"]["kernel"] + t["head"]["bias"] + (h * s) @ head_g["kernel"] + head_g["bias"]
    out = out - out.max(1, keepdims=True)
    logp = out - np.log(np.exp(out).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean() + lam * np_mmd(h, h_bar)


def test_mmd_matches_pairwise_numpy():
    rs = np.random.RandomState(0)
    a, b = rs.randn(7, 5) * 3, rs.randn(7, 5) * 3 + 1
    np.testing.assert_allclose(float(mmd_rbf(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))),
                               np_mmd(a, b), rtol=1e-4, atol=1e-6)
    assert float(mmd_rbf(jnp.asarray(a), jnp.asarray(a))) == pytest.approx(0.0, abs=1e-5)


def test_fedcp_loss_and_gradient_match_float64_numpy():
    rs = np.random.RandomState(2)
    B, I, D, C = 5, 6, 4, 3
    model = get_model("mlp", C, hidden=(D,))
    key = jax.random.PRNGKey(7)
    cpn = ConditionalPolicy(D).init(key, jnp.zeros((1, D)), key)["params"]
    t = {"base": {"fc0": {"kernel": rs.randn(I, D), "bias": rs.rand(D)}},
         "head": {"kernel": rs.randn(D, C), "bias": rs.randn(C)},
         "cpn": jax.tree_util.tree_map(lambda a: rs.randn(*np.shape(a)) * 0.8, cpn)}
    head_g = {"kernel": rs.randn(D, C), "bias": rs.randn(C)}
    base_bar = {"fc0": {"kernel": t["base"]["fc0"]["kernel"] + 0.3 * rs.randn(I, D), "bias": rs.rand(D)}}
    ctx, lam = rs.rand(D), 5.0
    x, y = rs.randn(B, 2, 3, 1), rs.randint(0, C, B)
    f32 = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree)
    loss_fn = fedcp_loss(model, lam)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        f32(t), {}, {"x": f32(x), "y": jnp.asarray(y)}, key, f32(head_g), f32(base_bar), f32(ctx))
    gumbel = np.asarray(jax.random.gumbel(key, (B, 2, D), jnp.float32), np.float64)  # the noise the CPN draws
    ref = lambda tt: np_fedcp_loss(tt, x, y, head_g, base_bar, ctx, gumbel, lam)
    np.testing.assert_allclose(float(loss), ref(t), rtol=1e-5)
    theta0, unflat = flatten_float64(t)
    g_ref = numeric_grad(lambda th: ref(unflat(th)), theta0)
    g_jax, _ = flatten_float64(grads)
    np.testing.assert_allclose(g_jax, g_ref, rtol=2e-3, atol=3e-4)
    assert np.abs(np.asarray(grads["base"]["fc0"]["kernel"])).sum() > 0


def _setup(lr=0.05):
    data = tiny_data()
    alg = fedcp(tiny_model(), lr=lr)
    server, clients = alg.init(jax.random.PRNGKey(0), data_spec_of(data))
    return data, alg, server, clients, jax.tree_util.tree_map(jnp.asarray, data.arrays())


def test_evaluation_samples_gumbel_noise_from_its_key():
    _, alg, server, clients, arrays = _setup()
    bc, c0, d0 = alg.broadcast(server), tree_index(clients, 0), tree_index(arrays, 0)
    a = alg.evaluate(bc, c0, d0, jax.random.PRNGKey(1))
    b = alg.evaluate(bc, c0, d0, jax.random.PRNGKey(1))
    c = alg.evaluate(bc, c0, d0, jax.random.PRNGKey(2))
    assert float(a["loss_sum"]) == float(b["loss_sum"])
    assert float(a["loss_sum"]) != float(c["loss_sum"])


def test_context_from_personal_head_before_the_global_head_is_installed():
    _, alg, server, clients, arrays = _setup()
    # CE gradients of a Dense head sum to zero over classes, so a head's row sum never moves under
    # SGD and identically initialised heads share it: give every head its own random row sums
    rs = np.random.RandomState(0)
    clients = {**clients, "head": {"kernel": jnp.asarray(rs.randn(3, 8, 10), jnp.float32), "bias": clients["head"]["bias"]}}
    server = {**server, "head_g": {"kernel": jnp.asarray(rs.randn(3, 8, 10), jnp.float32), "bias": server["head_g"]["bias"]}}
    bc = alg.broadcast(server)
    cs0, up0, _ = alg.client_update(bc, tree_index(clients, 0), tree_index(arrays, 0), jax.random.PRNGKey(1))
    cs2, up2, _ = alg.client_update(bc, tree_index(clients, 2), tree_index(arrays, 2), jax.random.PRNGKey(2))
    # v_i = row sum of the trained personal head (torch [C, D] layout = flax kernel.sum(1))
    np.testing.assert_allclose(np.asarray(cs0["ctx"]), np.asarray(cs0["head"]["kernel"]).sum(1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(head_context(cs0["head"])), np.asarray(cs0["head"]["kernel"]).sum(1), rtol=1e-6)
    # the uploaded head is the half/half mix of the personal head and the frozen global head
    g0 = tree_index(server["head_g"], 0)
    for p, g, u in zip(jax.tree_util.tree_leaves(cs0["head"]), jax.tree_util.tree_leaves(g0),
                       jax.tree_util.tree_leaves(up0["head_g"])):
        np.testing.assert_allclose(np.asarray(u), 0.5 * np.asarray(p) + 0.5 * np.asarray(g), rtol=1e-6)
    new = alg.server_update(server, tree_stack([up0, up2]), jnp.array([0.25, 0.75]), None)
    agg_kernel = 0.25 * np.asarray(up0["head_g"]["kernel"]) + 0.75 * np.asarray(up2["head_g"]["kernel"])
    # head and CPN go to the clients that trained (0 and 2) only; client 1 keeps its old copies
    np.testing.assert_allclose(np.asarray(new["head_g"]["kernel"][0]), agg_kernel, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new["head_g"]["kernel"][2]), agg_kernel, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(new["head_g"]["kernel"][1]), np.asarray(server["head_g"]["kernel"][1]))
    for a, b in zip(jax.tree_util.tree_leaves(tree_index(new["cpn"], 1)), jax.tree_util.tree_leaves(tree_index(server["cpn"], 1))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    agg_cpn = jax.tree_util.tree_map(lambda a, b: 0.25 * a + 0.75 * b, up0["cpn"], up2["cpn"])
    for a, b in zip(jax.tree_util.tree_leaves(tree_index(new["cpn"], 0)), jax.tree_util.tree_leaves(agg_cpn)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    # the context is not built from the newly installed global head
    assert not np.allclose(np.asarray(cs0["ctx"]), agg_kernel.sum(1))


def test_bad_inputs():
    with pytest.raises(ValueError, match="lam"):
        fedcp(tiny_model(), lam=-1.0)
    with pytest.raises(ValueError, match="tau"):
        fedcp(tiny_model(), tau=0.0)


def test_every_executor_gives_the_same_numbers_and_resume_is_exact(tmp_path):
    check_executors_and_resume("fedcp", tmp_path)
