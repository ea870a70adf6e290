"""Small fixtures shared by the DBE, GPFL and FedCP tests."""

import numpy as np

from jaxlab.data import load_dataset, make_federated
from jaxlab.models import get_model


def tiny_data(num_clients=3):
    x, y, nc = load_dataset("digits8")
    return make_federated(x[:600], y[:600], num_clients, "dir", alpha=1.0, num_classes=nc, seed=3)


def tiny_model(num_classes=10, hidden=8):
    return get_model("mlp", num_classes, hidden=(hidden,))


def numeric_grad(f, theta, eps=1e-6):
    """Central finite differences of a scalar float64 function of a flat vector."""
    g = np.zeros_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = eps
        g[i] = (f(theta + e) - f(theta - e)) / (2 * eps)
    return g


def flatten_float64(tree):
    """``(theta float64 [P], unflat)`` for finite-difference checks over a parameter pytree."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    shapes = [np.shape(l) for l in leaves]

    def unflat(theta):
        out, i = [], 0
        for s in shapes:
            n = int(np.prod(s))
            out.append(theta[i:i + n].reshape(s))
            i += n
        return jax.tree_util.tree_unflatten(treedef, out)

    return np.concatenate([np.asarray(l, np.float64).ravel() for l in leaves]), unflat


def check_executors_and_resume(name, tmp_path, **hparams):
    """Every executor gives the same numbers as ``scan`` (sequential bitwise, vmap/sharded to 1e-4)
    after 2 rounds with join ratio 0.67, and a run stopped after round 1 resumes exactly."""
    import jax
    import pytest

    from jaxlab.fl.algorithms import get_algorithm
    from jaxlab.fl.engine import Simulation
    from jaxlab.utils.workdir import Workdir

    data = tiny_data()
    hp = {k: (data if v == "DATA" else v) for k, v in hparams.items()}

    def run(strategy, workdir=None, stop_after=None):
        alg = get_algorithm(name, tiny_model(), lr=0.05, batch_size=10, **hp)
        sim = Simulation(alg, data, strategy=strategy, join_ratio=0.67, seed=0)
        return sim, sim.run(2, workdir=workdir, stop_after=stop_after)

    leaves = lambda sim: [np.asarray(a) for a in jax.tree_util.tree_leaves(sim.final_state)]
    ref_wd = Workdir(tmp_path / "ref")
    ref, ref_sum = run("scan", workdir=ref_wd)
    for strategy in ("sequential", "vmap", "sharded"):
        sim, s = run(strategy)
        exact = strategy == "sequential"
        for a, b in zip(leaves(sim), leaves(ref)):
            if exact:
                np.testing.assert_array_equal(a, b, err_msg=strategy)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=strategy)
        assert s["best_acc"] == pytest.approx(ref_sum["best_acc"], abs=1e-9 if exact else 3e-3)
    wd = Workdir(tmp_path / "resumed")
    assert run("scan", workdir=wd, stop_after=1)[1] == {"stopped_at_round": 1}
    resumed, _ = run("scan", workdir=wd)
    for a, b in zip(leaves(resumed), leaves(ref)):
        np.testing.assert_array_equal(a, b)
    rows = lambda w: [(r["step"], r["acc"], r["test_loss"]) for r in w.read_metrics()]
    assert rows(wd) == rows(ref_wd) and len(rows(wd)) == 3
