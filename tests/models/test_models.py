import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.models import get_model
from jaxlab.models.layers import Conv


@pytest.mark.parametrize("impl", ["im2col", "patches"])
@pytest.mark.parametrize("stride,padding", [((1, 1), "VALID"), ((2, 2), 1), ((1, 1), "SAME"), ((2, 2), "SAME")])
def test_fast_conv_equals_xla_conv(stride, padding, impl):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 11, 11, 4))
    a = Conv(6, (3, 3), stride, padding, impl=impl)
    b = Conv(6, (3, 3), stride, padding, impl="xla")
    v = a.init(jax.random.PRNGKey(1), x)
    np.testing.assert_allclose(a.apply(v, x), b.apply(v, x), rtol=1e-4, atol=1e-5)
    # gradients agree too (they drive training)
    ga = jax.grad(lambda v: a.apply(v, x).sum())(v)
    gb = jax.grad(lambda v: b.apply(v, x).sum())(v)
    np.testing.assert_allclose(ga["params"]["kernel"], gb["params"]["kernel"], rtol=1e-4, atol=1e-4)


def test_cnn_matches_pfllib_fedavgcnn_size_and_split():
    m = get_model("cnn", 10)
    v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    n = sum(a.size for a in jax.tree_util.tree_leaves(v["params"]))
    assert n == 582_026  # PFLlib FedAvgCNN(in=1, dim=1024) parameter count
    assert set(v["params"]) == {"base", "head"}
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 28, 28, 1))
    z = m.base.apply({"params": v["params"]["base"]}, x)
    assert z.shape == (4, 512) and float(z.min()) >= 0.0  # post-ReLU features
    np.testing.assert_allclose(m.head.apply({"params": v["params"]["head"]}, z), m.apply(v, x), rtol=1e-6)


def test_torch_style_init_bounds():
    m = get_model("cnn", 10)
    v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    k = np.asarray(v["params"]["base"]["fc1"]["kernel"])
    bound = 1 / np.sqrt(1024)
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.95 * bound


@pytest.mark.parametrize("name,shape", [("resnet20", (2, 32, 32, 3)), ("resnet18", (2, 32, 32, 3))])
def test_resnets_have_explicit_batch_stats(name, shape):
    m = get_model(name, 7)
    v = m.init(jax.random.PRNGKey(0), jnp.zeros(shape))
    assert "batch_stats" in v and set(v["batch_stats"]) == {"base"}
    out, upd = m.apply(v, jnp.ones(shape), train=True, mutable=["batch_stats"])
    assert out.shape == (2, 7)
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), upd["batch_stats"], v["batch_stats"])
    assert max(jax.tree_util.tree_leaves(moved)) > 0


def test_sequence_models():
    lstm = get_model("lstm", 3, hidden=8)
    x = jnp.ones((2, 5, 4))
    v = lstm.init(jax.random.PRNGKey(0), x)
    assert lstm.apply(v, x).shape == (2, 3)
    ft = get_model("fasttext", 4, vocab_size=50, hidden=8)
    t = jnp.array([[3, 4, 0, 0], [5, 0, 0, 0]])
    v = ft.init(jax.random.PRNGKey(0), t)
    assert ft.apply(v, t).shape == (2, 4)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        get_model("vgg99", 10)
    with pytest.raises(ValueError, match="vocab_size"):
        get_model("fasttext", 10)


def test_reshape_max_pool_equals_flax_max_pool():
    from flax import linen as nn

    from jaxlab.models.layers import max_pool

    y = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 10, 3))
    np.testing.assert_array_equal(max_pool(y), nn.max_pool(y, (2, 2), (2, 2)))
