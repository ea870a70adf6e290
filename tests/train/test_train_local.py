import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import label_binarize

from jaxlab.models import get_model
from jaxlab.train import classification_metrics, classifier_loss, client_batches, make_local_train


def _setup(n=37, nmax=50, b=8):
    m = get_model("mlp", 3, hidden=(5,))
    rng = np.random.default_rng(0)
    x = np.zeros((nmax, 4), np.float32)
    y = np.zeros((nmax,), np.int32)
    x[:n] = rng.normal(size=(n, 4))
    y[:n] = rng.integers(0, 3, n)
    params = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))["params"]
    return m, params, jnp.asarray(x), jnp.asarray(y), n, b


def test_batches_follow_drop_last_and_cover_real_rows_only():
    m, p, x, y, n, b = _setup()
    batches, mask = client_batches(x, y, n, jax.random.PRNGKey(1), b, epochs=2)
    assert batches["x"].shape == (2 * (50 // 8), 8, 4)
    assert int(mask.sum()) == 2 * (n // b)
    real = np.asarray(batches["x"])[np.asarray(mask)]
    # every drawn row is a real (non-padding) row, and no row repeats within an epoch
    rows = {tuple(r) for r in np.asarray(x[:n]).round(6)}
    per_epoch = real.reshape(2, -1, 4)
    for e in per_epoch:
        assert all(tuple(r) in rows for r in e.round(6))
        assert len({tuple(r) for r in e.round(6)}) == len(e)


def test_local_train_equals_a_plain_python_sgd_loop():
    m, params, x, y, n, b = _setup()
    batches, mask = client_batches(x, y, n, jax.random.PRNGKey(1), b, epochs=1)
    lt = make_local_train(classifier_loss(m), optax.sgd(0.1))
    p1, _, met = lt(params, optax.sgd(0.1).init(params), batches, mask, jax.random.PRNGKey(2))
    # reference: loop over the real steps only, float64 numpy-free jax eager
    loss_fn = classifier_loss(m)
    p = params
    for s in range(mask.shape[0]):
        if not bool(mask[s]):
            continue
        bt = jax.tree_util.tree_map(lambda a: a[s], batches)
        g = jax.grad(lambda q: loss_fn(q, {}, bt, None)[0])(p)
        p = jax.tree_util.tree_map(lambda a, gg: a - 0.1 * gg, p, g)
    for a, r in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p)):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)
    assert int(met["steps"]) == n // b


def test_masked_steps_change_nothing():
    m, params, x, y, n, b = _setup(n=5, b=8)  # fewer samples than one batch: drop_last => zero steps
    batches, mask = client_batches(x, y, n, jax.random.PRNGKey(1), b)
    assert int(mask.sum()) == 0
    lt = make_local_train(classifier_loss(m), optax.sgd(0.1))
    p1, _, met = lt(params, optax.sgd(0.1).init(params), batches, mask, jax.random.PRNGKey(2))
    for a, r in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, r)
    assert float(met["loss"]) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(40, 6)).astype(np.float32)
    logits[:, 0] = logits[:, 1]  # ties
    y = rng.integers(0, 6, 40)
    n = 31
    m = classification_metrics(jnp.asarray(logits), jnp.asarray(y), n)
    p = np.exp(logits[:n] - logits[:n].max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    yb = label_binarize(y[:n], classes=range(6))
    assert int(m["correct"]) == int((logits[:n].argmax(1) == y[:n]).sum()) and int(m["count"]) == n
    np.testing.assert_allclose(float(m["auc_micro"]), roc_auc_score(yb, p, average="micro"), atol=1e-5)
    present = yb.sum(0) > 0
    np.testing.assert_allclose(float(m["auc_macro"]), roc_auc_score(yb[:, present], p[:, present], average="macro"), atol=1e-5)
    ref_loss = -np.log(p[np.arange(n), y[:n]]).sum()
    np.testing.assert_allclose(float(m["loss_sum"]), ref_loss, rtol=1e-4)
