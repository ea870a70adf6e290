"""SkyMask's mask training against a float64 NumPy forward/backward, its GMM split on a planted
case; the FL wrapper inside the shared engine (Pill's tests: test_robust_pill.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.fl.robust.flat import flattener
from jaxlab.fl.robust.skymask import classify_masks, skymask, train_masks

DIN, C = 5, 3


@pytest.fixture(scope="module")
def tiny_fed():
    from jaxlab.data import load_dataset, make_federated

    x, y, _ = load_dataset("digits8")
    return make_federated(x[:600], y[:600], 6, "iid", num_classes=10)


def _softmax_regression(rng, m=20):
    x = rng.normal(size=(m, DIN))
    y = rng.integers(0, C, m)
    return x, y


def jax_loss(x, y):
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y)

    def loss(flat):
        w, b = flat[:DIN * C].reshape(DIN, C), flat[DIN * C:]
        logp = jax.nn.log_softmax(xj @ w + b)
        return -jnp.take_along_axis(logp, yj[:, None], 1).mean()

    return loss


def np_train_masks(cands, x, y, epochs, lr=1e7, clip=1e-7):
    m = np.ones_like(cands)
    first = None
    for e in range(epochs):
        s = 1 / (1 + np.exp(-m))
        tot = s.sum(0)
        mixed = (s * cands).sum(0) / tot
        w, b = mixed[:DIN * C].reshape(DIN, C), mixed[DIN * C:]
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        loss = -np.log(p[np.arange(len(y)), y]).mean()
        dz = p.copy()
        dz[np.arange(len(y)), y] -= 1
        dz /= len(y)
        dmixed = np.concatenate([(x.T @ dz).ravel(), dz.sum(0)])
        grad = dmixed * s * (1 - s) * (cands - mixed) / tot
        first = loss if e == 0 else first
        if e == 10 and first - loss < 1e-2:
            break
        m = m - lr * np.clip(grad, -clip, clip)
    return m


def test_mask_training_matches_numpy_float64():
    rng = np.random.default_rng(0)
    x, y = _softmax_regression(rng)
    cands = rng.normal(size=(6, DIN * C + C))
    for epochs in (3, 20):
        ref = np_train_masks(cands, x, y, epochs)
        got, _ = jax.jit(lambda c: train_masks(c, jax_loss(x, y), epochs=epochs))(jnp.asarray(cands, jnp.float32))
        # logits move by integers-or-less per step; compare the values and the binarisation
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=2e-3)
        clear = np.abs(ref) > 1e-2  # logits start at 1 and move by <= 1, so many sit exactly at 0
        assert ((np.asarray(got) > 0) == (ref > 0))[clear].all()


def test_gmm_puts_planted_attackers_outside_the_server_cluster():
    rng = np.random.default_rng(1)
    server = (rng.random(400) > 0.5).astype(np.float32)
    benign = np.array([np.where(rng.random(400) < 0.05, 1 - server, server) for _ in range(10)])
    attack = np.tile(np.where(rng.random(400) < 0.6, 1 - server, server), (4, 1))
    masks = jnp.asarray(np.vstack([attack, benign, server[None]]))
    flags = np.asarray(classify_masks(masks, 0))
    assert flags[-1] and flags[4:14].all() and not flags[:4].any()


def test_skymask_end_to_end_flags_model_that_hurts_root_loss():
    """Candidates: 8 near-good models (close to the root-trained one) and 3 copies of a model with
    the opposite sign; the bad ones must be flagged and the aggregate is the mean of the rest."""
    rng = np.random.default_rng(2)
    x, y = _softmax_regression(rng, 60)
    loss = jax_loss(x, y)
    w = jnp.zeros(DIN * C + C)
    good = -np.asarray(jax.grad(loss)(w))  # one gradient step direction
    g_good = -(good * 5.0)[None] + 0.5 * rng.normal(size=(8, DIN * C + C))   # updates g = w - w_local
    g_bad = np.tile(good * 5.0, (3, 1))
    g = jnp.asarray(np.vstack([g_bad, g_good]), jnp.float32)
    out = skymask(g, None, jax.random.PRNGKey(0), root_update=jnp.asarray(-good * 5.0, jnp.float32), global_flat=w,
                  loss_of_flat=loss)
    kept = np.asarray(out.benign)
    assert not kept[:3].any() and kept[3:].sum() >= 6
    np.testing.assert_allclose(out.update, np.asarray(g)[kept].mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="global_flat"):
        skymask(g, None, None, root_update=g[0], global_flat=jnp.zeros(3), loss_of_flat=loss)


# ------------------------------------------------------------------------------------ FL wrapper

def test_robust_fedavg_equals_fedavg_in_the_engine(tiny_fed):
    """With the plain mean and no attack the wrapper is FedAvg: same global model after a round."""
    from jaxlab.fl.algorithms.fedavg import fedavg
    from jaxlab.fl.engine import Simulation
    from jaxlab.fl.robust.defenses import make_aggregator
    from jaxlab.fl.robust.fl import robust_fedavg
    from jaxlab.models import make_mlp

    model = make_mlp(10, hidden=(8,))
    mal = np.zeros(tiny_fed.num_clients, bool)
    a = Simulation(robust_fedavg(model, defense=make_aggregator("fedavg"), malicious=mal, lr=0.05), tiny_fed,
                   strategy="sequential", seed=3)
    b = Simulation(fedavg(model, lr=0.05), tiny_fed, strategy="sequential", seed=3)
    a.run(1, show_progress=False)
    b.run(1, show_progress=False)
    pa, pb = a.final_state[0]["params"], b.final_state[0]["params"]
    for la, lb in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
        np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-5)


def test_robust_fedavg_counts_detection_and_rejects_bad_setup(tiny_fed):
    from jaxlab.fl.robust.attacks import make_attack
    from jaxlab.fl.robust.defenses import make_aggregator
    from jaxlab.fl.robust.fl import robust_fedavg, simulate
    from jaxlab.models import make_mlp

    model = make_mlp(10, hidden=(8,))
    n = tiny_fed.num_clients
    mal = np.arange(n) < 1
    alg = robust_fedavg(model, defense=make_aggregator("multikrum", f=1), malicious=mal,
                        attack=make_attack("gaussian", sigma=10.0), lr=0.05)
    out = simulate(alg, tiny_fed, 2)
    assert out["det"]["tp"] == 2 and out["det"]["fn"] == 0 and out["fnr"] == 0.0  # 2 rounds x 1 attacker
    assert out["det"]["tp"] + out["det"]["fp"] + out["det"]["fn"] + out["det"]["tn"] == 2 * n
    assert math.isnan(out["coord_keep_mal"]) and math.isnan(out["coord_keep_ben"])  # a selecting rule
    # the median flags nobody; per coordinate a huge-noise attacker sits in the tails, so it holds the
    # median far less often than an honest client, and the window's shares add up to 1 (odd n) or 2
    med = simulate(robust_fedavg(model, defense=make_aggregator("median", f=1), malicious=mal,
                                 attack=make_attack("gaussian", sigma=10.0), lr=0.05, coordinate_diagnostic=True),
                   tiny_fed, 2)
    assert math.isnan(med["fpr"]) or med["det"]["tp"] == 0
    width = 1 if n % 2 else 2
    assert math.isclose(med["coord_keep_mal"] + (n - 1) * med["coord_keep_ben"], width, rel_tol=1e-4)
    assert med["coord_keep_mal"] < 0.25 * med["coord_keep_ben"]
    with pytest.raises(ValueError, match="root"):
        robust_fedavg(model, defense=make_aggregator("fltrust"), malicious=mal)
    with pytest.raises(ValueError, match="malicious"):
        simulate(robust_fedavg(model, defense=make_aggregator("fedavg"), malicious=mal[:-1]), tiny_fed, 1)


def test_oracle_rule_is_the_weighted_mean_of_the_truly_benign_rows():
    from jaxlab.fl.robust.defenses import make_aggregator, oracle_mean

    rng = np.random.default_rng(4)
    g = rng.normal(size=(7, 30)).astype(np.float32)
    w = rng.uniform(1, 5, 7).astype(np.float32)
    mal = np.array([1, 0, 0, 1, 0, 1, 0], bool)
    out = oracle_mean(jnp.asarray(g), jnp.asarray(w), malicious=jnp.asarray(mal))
    want = (w[~mal, None].astype(np.float64) * g[~mal]).sum(0) / w[~mal].sum()
    np.testing.assert_allclose(out.update, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out.benign, ~mal)
    jitted = jax.jit(lambda g, m: oracle_mean(g, None, malicious=m))(jnp.asarray(g), jnp.asarray(mal))
    np.testing.assert_allclose(jitted.update, g[~mal].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(oracle_mean(g, None, malicious=np.ones(7, bool)).update, np.zeros(30))  # nobody left
    agg = make_aggregator("oracle")
    with pytest.raises(ValueError, match="ctx\\['malicious'\\]"):
        agg.apply(jnp.asarray(g), None, None, (), {})
    with pytest.raises(ValueError, match="expected \\(7,\\)"):
        oracle_mean(g, None, malicious=mal[:-1])


def test_oracle_in_the_fl_wrapper_ignores_the_attackers_exactly(tiny_fed):
    """Under a wrecking attack the oracle's model equals FedAvg over the benign clients alone: the
    attackers' rows get weight 0 and every attacker is flagged, no benign client is."""
    from jaxlab.fl.robust.attacks import make_attack
    from jaxlab.fl.robust.defenses import make_aggregator
    from jaxlab.fl.robust.fl import robust_fedavg, simulate
    from jaxlab.models import make_mlp

    model = make_mlp(10, hidden=(8,))
    n = tiny_fed.num_clients
    mal = np.arange(n) < 2
    a = simulate(robust_fedavg(model, defense=make_aggregator("oracle"), malicious=mal,
                               attack=make_attack("gaussian", sigma=100.0), lr=0.05), tiny_fed, 2, seed=1)
    b = simulate(robust_fedavg(model, defense=make_aggregator("oracle"), malicious=mal, lr=0.05), tiny_fed, 2, seed=1)
    assert a["det"]["tp"] == 4 and a["det"]["fp"] == 0 and a["fpr"] == 0.0 and a["fnr"] == 0.0
    # what the attackers send does not matter: the same global model
    for la, lb in zip(jax.tree_util.tree_leaves(a["server_state"]["params"]),
                      jax.tree_util.tree_leaves(b["server_state"]["params"])):
        np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6)
    c = simulate(robust_fedavg(model, defense=make_aggregator("fedavg"), malicious=mal,
                               attack=make_attack("gaussian", sigma=100.0), lr=0.05), tiny_fed, 2, seed=1)
    assert c["acc"] < a["acc"] - 0.1  # while the same attack wrecks the plain mean
