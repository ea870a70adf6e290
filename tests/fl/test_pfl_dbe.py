"""DBE: the PRBM is the only personal state and never uploaded; the global mean comes from the
warm-up and stays frozen; the loss and its gradient match a float64 numpy re-derivation; every
executor gives the same numbers and a resumed run equals an uninterrupted one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.fl.algorithm import data_spec_of, tree_index
from jaxlab.fl.algorithms.common import LocalSGD
from jaxlab.fl.algorithms.dbe import dbe, dbe_loss
from jaxlab.models import get_model
from jaxlab.train.local import client_batches
from tests.fl.pfl_helpers import check_executors_and_resume, flatten_float64, numeric_grad, tiny_data, tiny_model


def np_dbe_loss(x, y, W1, b1, W2, b2, prbm, mu0, zg, kappa, m):
    z = np.maximum(x.reshape(len(x), -1) @ W1 + b1, 0.0)
    mu = (1 - m) * mu0 + m * z.mean(0)
    logits = (z + prbm) @ W2 + b2
    logits = logits - logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -logp[np.arange(len(y)), y].mean()
    return ce + kappa * np.mean(0.5 * (mu - zg) ** 2), mu


def test_dbe_loss_and_gradient_match_float64_numpy():
    rs = np.random.RandomState(0)
    B, I, D, C = 5, 6, 4, 3
    model = get_model("mlp", C, hidden=(D,))
    x = rs.randn(B, 2, 3, 1).astype(np.float32)
    y = rs.randint(0, C, B)
    W1, b1, W2, b2 = rs.randn(I, D), rs.randn(D), rs.randn(D, C), rs.randn(C)
    prbm, mu0, zg = rs.randn(D), rs.rand(D), rs.rand(D)
    kappa, m = 50.0, 0.7
    trainable = {"params": {"base": {"fc0": {"kernel": W1, "bias": b1}}, "head": {"kernel": W2, "bias": b2}},
                 "prbm": prbm}
    trainable = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), trainable)
    state = {"model": {}, "mu": jnp.asarray(mu0, jnp.float32)}
    loss_fn = dbe_loss(model, kappa, m)
    (loss, (new_state, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, state, {"x": jnp.asarray(x), "y": jnp.asarray(y)}, jax.random.PRNGKey(0), jnp.asarray(zg, jnp.float32))

    theta0, unflat = flatten_float64(trainable)

    def f(theta):
        t = unflat(theta)
        p = t["params"]
        return np_dbe_loss(x.astype(np.float64), y, p["base"]["fc0"]["kernel"], p["base"]["fc0"]["bias"],
                           p["head"]["kernel"], p["head"]["bias"], t["prbm"], mu0, zg, kappa, m)[0]

    ref_loss, ref_mu = np_dbe_loss(x.astype(np.float64), y, W1, b1, W2, b2, prbm, mu0, zg, kappa, m)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new_state["mu"]), ref_mu, rtol=1e-5, atol=1e-6)
    g_ref = numeric_grad(f, theta0)
    g = np.concatenate([np.asarray(l, np.float64).ravel() for l in jax.tree_util.tree_leaves(grads)])
    np.testing.assert_allclose(g, g_ref, rtol=2e-3, atol=2e-4)
    # the PRBM gets a gradient only through the head input
    assert np.abs(np.asarray(grads["prbm"])).sum() > 0


def test_prbm_is_the_only_personal_state_and_never_uploaded():
    data = tiny_data()
    model = tiny_model()
    alg = dbe(model, lr=0.05, warmup_data=data)
    spec = data_spec_of(data)
    server, clients = alg.init(jax.random.PRNGKey(0), spec)
    assert set(clients) == {"prbm", "model_state"}
    assert clients["model_state"] == {}  # no BatchNorm in the MLP: the PRBM is all that is personal
    assert clients["prbm"].shape == (3, 8) and not np.any(np.asarray(clients["prbm"]))
    arrays = jax.tree_util.tree_map(jnp.asarray, data.arrays())
    cs, upload, _ = alg.client_update(alg.broadcast(server), tree_index(clients, 0), tree_index(arrays, 0),
                                      jax.random.PRNGKey(1))
    assert set(upload) == {"params"}
    assert jax.tree_util.tree_structure(upload["params"]) == jax.tree_util.tree_structure(server["params"])
    assert np.abs(np.asarray(cs["prbm"])).max() > 0  # it was trained ...
    up_leaves = [np.asarray(l) for l in jax.tree_util.tree_leaves(upload)]
    assert not any(l.shape == cs["prbm"].shape and np.allclose(l, cs["prbm"]) for l in up_leaves)  # ... and kept
    stacked = jax.tree_util.tree_map(lambda a: a[None], upload)
    new_server = alg.server_update(server, stacked, jnp.ones((1,)), jax.random.PRNGKey(2))
    np.testing.assert_array_equal(new_server["global_mean"], server["global_mean"])  # frozen
    # personalised inference adds the PRBM before the head
    d0 = tree_index(arrays, 0)
    ev0 = alg.evaluate(alg.broadcast(new_server), {"prbm": jnp.zeros(8), "model_state": {}}, d0, None)
    ev1 = alg.evaluate(alg.broadcast(new_server), {"prbm": jnp.full(8, 3.0), "model_state": {}}, d0, None)
    assert float(ev0["loss_sum"]) != pytest.approx(float(ev1["loss_sum"]))


def test_global_mean_is_the_sample_weighted_warmup_mean():
    """Independent re-derivation: a Python loop of plain-CE SGD steps per client from the initial
    model, the last batch's mean feature (momentum 1), weighted by train-set size."""
    data = tiny_data()
    model = tiny_model()
    alg = dbe(model, lr=0.05, warmup_data=data)
    key = jax.random.PRNGKey(4)
    server, _ = alg.init(key, data_spec_of(data))
    p0 = server["params"]
    k_warm = jax.random.fold_in(key, 1)

    def ce(params, xb, yb):
        z = model.apply({"params": params}, xb, method="features")
        logp = jax.nn.log_softmax(model.apply({"params": params}, z, method="classify"))
        return -jnp.take_along_axis(logp, yb[:, None], 1).mean()

    mus = []
    for i in range(data.num_clients):
        d = data.arrays()
        kb, _ = jax.random.split(jax.random.fold_in(k_warm, i))
        batches, mask = client_batches(jnp.asarray(d["train_x"][i]), jnp.asarray(d["train_y"][i]),
                                       jnp.asarray(d["train_n"][i]), kb, 10, 1)
        params, mu = p0, np.zeros(8)
        for s in range(int(mask.sum())):
            xb, yb = batches["x"][s], batches["y"][s]
            mu = np.asarray(model.apply({"params": params}, xb, method="features")).mean(0)
            g = jax.grad(ce)(params, xb, yb)
            params = jax.tree_util.tree_map(lambda p, gg: p - 0.05 * gg, params, g)
        mus.append(mu)
    n = data.train_n.astype(np.float64)
    ref = (n[:, None] * np.array(mus)).sum(0) / n.sum()
    np.testing.assert_allclose(np.asarray(server["global_mean"]), ref, rtol=1e-4, atol=1e-5)
    assert np.abs(ref).sum() > 0


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="warmup_data"):
        dbe(model)
    data = tiny_data(3)
    alg = dbe(model, warmup_data=data)
    with pytest.raises(ValueError, match="3 clients"):
        alg.init(jax.random.PRNGKey(0), data_spec_of(tiny_data(4)))
    with pytest.raises(ValueError, match="kappa"):
        dbe(model, kappa=-1.0, warmup_data=data)
    with pytest.raises(ValueError, match="momentum"):
        dbe(model, momentum=1.5, warmup_data=data)


def test_every_executor_gives_the_same_numbers_and_resume_is_exact(tmp_path):
    check_executors_and_resume("dbe", tmp_path, warmup_data="DATA")
