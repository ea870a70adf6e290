"""GPFL: loss and gradient against a float64 numpy re-derivation; conditional inputs zero before
the first aggregation and rebuilt from each client's pre-overwrite GCE; weight decay only on GCE and
CoV; executors agree and resume is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.fl.algorithm import data_spec_of, tree_index, tree_stack
from jaxlab.fl.algorithms.gpfl import (ConditionalValve, _valve, gpfl, gpfl_loss, label_frequency,
                                       official_hparams)
from jaxlab.fl.algorithms.dbe import classify, features
from jaxlab.models import get_model
from tests.fl.pfl_helpers import check_executors_and_resume, flatten_float64, numeric_grad, tiny_data, tiny_model


def np_log_softmax(a):
    a = a - a.max(1, keepdims=True)
    return a - np.log(np.exp(a).sum(1, keepdims=True))


def np_branch(c, br):
    v = np.maximum(c @ br["dense"]["kernel"] + br["dense"]["bias"], 0.0)
    v = (v - v.mean()) / np.sqrt(v.var() + 1e-5)
    return v * br["norm"]["scale"] + br["norm"]["bias"]


def np_gpfl_loss(t, x, y, g, p, gce_frozen, lam):
    f = np.maximum(x.reshape(len(x), -1) @ t["base"]["fc0"]["kernel"] + t["base"]["fc0"]["bias"], 0.0)
    cov = t["cov"]
    valve = lambda c: np.maximum(f * (np_branch(c, cov["gamma"]) + 1.0) + np_branch(c, cov["beta"]), 0.0)
    f_p, f_g = valve(p), valve(g)
    ce = -np_log_softmax(f_p @ t["head"]["kernel"] + t["head"]["bias"])[np.arange(len(y)), y].mean()
    E = t["gce"]
    cos = (f_g / np.linalg.norm(f_g, axis=1, keepdims=True)) @ (E / np.linalg.norm(E, axis=1, keepdims=True)).T
    l_alg = -np_log_softmax(cos)[np.arange(len(y)), y].mean()
    l_mlg = np.sqrt(((f_g - gce_frozen[y]) ** 2).sum())  # Frobenius, not squared, not averaged
    return ce + l_alg + lam * l_mlg





def test_gpfl_loss_and_gradient_match_float64_numpy():
    rs = np.random.RandomState(1)
    B, I, D, U = 6, 6, 4, 3
    model = get_model("mlp", U, hidden=(D,))
    cov = ConditionalValve(D).init(jax.random.PRNGKey(0), jnp.zeros(D))["params"]
    t = {"base": {"fc0": {"kernel": rs.randn(I, D), "bias": rs.rand(D)}},
         "head": {"kernel": rs.randn(D, U), "bias": rs.randn(U)},
         "gce": rs.randn(U, D),
         "cov": jax.tree_util.tree_map(lambda a: rs.randn(*np.shape(a)) * 0.7, cov)}
    x = rs.randn(B, 2, 3, 1)
    y = rs.randint(0, U, B)
    g, p, gce_frozen, lam = rs.randn(D), rs.randn(D), rs.randn(U, D), 0.37
    tj = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), t)
    loss_fn = gpfl_loss(model, lam)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        tj, {}, {"x": f32(x), "y": jnp.asarray(y)}, None, f32(g), f32(p), f32(gce_frozen))
    theta0, unflat = flatten_float64(t)
    np.testing.assert_allclose(float(loss), np_gpfl_loss(t, x, y, g, p, gce_frozen, lam), rtol=1e-5)
    g_ref = numeric_grad(lambda th: np_gpfl_loss(unflat(th), x, y, g, p, gce_frozen, lam), theta0)
    g_jax, _ = flatten_float64(grads)
    np.testing.assert_allclose(g_jax, g_ref, rtol=2e-3, atol=3e-4)


def test_label_frequency_counts_the_drop_last_prefix():
    y = jnp.array([0, 0, 1, 2, 2, 2, 1, 0, 0, 0])
    np.testing.assert_allclose(label_frequency(y, jnp.array(9), 3, 4), [3 / 8, 2 / 8, 3 / 8])


def _setup(lr=0.05, **kw):
    data = tiny_data()
    alg = gpfl(tiny_model(), lr=lr, **kw)
    server, clients = alg.init(jax.random.PRNGKey(0), data_spec_of(data))
    return data, alg, server, clients, jax.tree_util.tree_map(jnp.asarray, data.arrays())


def test_conditional_inputs_are_zero_before_the_first_aggregation():
    data, alg, server, clients, arrays = _setup()
    bc = alg.broadcast(server)
    c0, d0 = tree_index(clients, 0), tree_index(arrays, 0)
    garbage = {**c0, "g": jnp.full(8, 7.0), "p": jnp.full(8, -3.0)}
    for fn in (lambda c: alg.evaluate(bc, c, d0, None), lambda c: alg.client_update(bc, c, d0, jax.random.PRNGKey(5))[1]):
        a, b = fn(c0), fn(garbage)
        for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    # and the round-0 evaluation is exactly the valve with zero conditional inputs
    alg_model = tiny_model()
    f, _ = features(alg_model, server["base"], {}, d0["test_x"], False)
    logits = classify(alg_model, c0["head"], _valve(ConditionalValve(8), server["cov"], f, jnp.zeros(8)))
    ev = alg.evaluate(bc, c0, d0, None)
    correct = int(((jnp.argmax(logits, -1) == d0["test_y"]) & (jnp.arange(len(logits)) < d0["test_n"])).sum())
    assert int(ev["correct"]) == correct


def test_conditional_inputs_come_from_the_pre_overwrite_gce():
    """Clients 0 and 2 train, client 1 sits out: after aggregation client 0's (g, p) come from its
    own trained GCE, client 1's from the GCE it held (the initial one), never from the new global GCE."""
    data, alg, server, clients, arrays = _setup()
    bc = alg.broadcast(server)
    cs0, up0, _ = alg.client_update(bc, tree_index(clients, 0), tree_index(arrays, 0), jax.random.PRNGKey(1))
    _, up2, _ = alg.client_update(bc, tree_index(clients, 2), tree_index(arrays, 2), jax.random.PRNGKey(2))
    new_server = alg.server_update(server, tree_stack([up0, up2]), jnp.array([0.5, 0.5]), None)
    assert bool(new_server["aggregated"]) and list(np.asarray(new_server["selected_last"])) == [True, False, True]
    np.testing.assert_array_equal(new_server["gce_prev"], server["gce"])
    trained_gce = np.asarray(up0["gce"])
    alpha0 = np.asarray(label_frequency(arrays["train_y"][0], arrays["train_n"][0], 10, 10))
    np.testing.assert_allclose(np.asarray(cs0["g"]), trained_gce.mean(0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(cs0["p"]), alpha0 @ trained_gce, rtol=1e-5, atol=1e-6)
    assert not np.allclose(trained_gce, np.asarray(server["gce"]))  # the GCE did train
    nbc = alg.broadcast(new_server)

    def ev_with(c, d, p):
        f, _ = features(tiny_model(), new_server["base"], {}, d["test_x"], False)
        logits = classify(tiny_model(), c["head"], _valve(ConditionalValve(8), new_server["cov"], f, p))
        return float(jnp.where(jnp.arange(len(logits)) < d["test_n"],
                               -jnp.take_along_axis(jax.nn.log_softmax(logits), d["test_y"][:, None], 1)[:, 0],
                               0.0).sum())

    d1 = tree_index(arrays, 1)
    alpha1 = np.asarray(label_frequency(d1["train_y"], d1["train_n"], 10, 10))
    c1 = tree_index(clients, 1)
    np.testing.assert_allclose(float(alg.evaluate(nbc, c1, d1, None)["loss_sum"]),
                               ev_with(c1, d1, jnp.asarray(alpha1 @ np.asarray(server["gce"]))), rtol=1e-5)
    d0 = tree_index(arrays, 0)
    np.testing.assert_allclose(float(alg.evaluate(nbc, cs0, d0, None)["loss_sum"]),
                               ev_with(cs0, d0, cs0["p"]), rtol=1e-5)
    assert abs(ev_with(cs0, d0, jnp.asarray(alpha0 @ np.asarray(new_server["gce"]))) - ev_with(cs0, d0, cs0["p"])) > 0


def test_weight_decay_only_on_gce_and_cov():
    """One SGD step (a client with exactly one batch): mu changes GCE and CoV by -lr*mu*w, nothing else."""
    data = tiny_data()
    one = {k: jnp.asarray(v[0]) for k, v in data.arrays().items()}
    one["train_n"] = jnp.asarray(10)
    spec = data_spec_of(data)
    outs = {}
    for mu in (0.0, 0.1):
        alg = gpfl(tiny_model(), lr=0.5, mu=mu)
        server, clients = alg.init(jax.random.PRNGKey(0), spec)
        cs, up, m = alg.client_update(alg.broadcast(server), tree_index(clients, 0), one, jax.random.PRNGKey(2))
        assert int(m["steps"]) == 1
        outs[mu] = (server, cs, up)
    server = outs[0.0][0]
    for part in ("base",):
        for a, b in zip(jax.tree_util.tree_leaves(outs[0.0][2][part]), jax.tree_util.tree_leaves(outs[0.1][2][part])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(outs[0.0][1]["head"]), jax.tree_util.tree_leaves(outs[0.1][1]["head"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for part in ("gce", "cov"):
        for w0, a, b in zip(jax.tree_util.tree_leaves(server[part]), jax.tree_util.tree_leaves(outs[0.0][2][part]),
                            jax.tree_util.tree_leaves(outs[0.1][2][part])):
            np.testing.assert_allclose(np.asarray(b) - np.asarray(a), -0.5 * 0.1 * np.asarray(w0), rtol=1e-4, atol=1e-6)


def test_official_hyperparameters_and_bad_inputs():
    assert official_hparams("cnn") == {"lam": 0.01, "mu": 0.1}
    assert official_hparams("resnet18") == {"lam": 1e-4, "mu": 0.0}
    with pytest.raises(ValueError, match="backbone"):
        official_hparams("vgg")
    with pytest.raises(ValueError, match="lam"):
        gpfl(tiny_model(), lam=-1.0)


def test_every_executor_gives_the_same_numbers_and_resume_is_exact(tmp_path):
    check_executors_and_resume("gpfl", tmp_path)
