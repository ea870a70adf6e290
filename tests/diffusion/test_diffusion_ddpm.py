"""Schedules, loss and samplers against closed forms (float64 numpy) and diffusers' schedulers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxlab.diffusion import ddpm


def test_linear_schedule_closed_form():
    s = ddpm.linear_schedule(1000)
    b = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(np.asarray(s.betas), b, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod), np.cumprod(1 - b), rtol=1e-5)


def test_cosine_schedule_closed_form():
    T = 200
    s = ddpm.cosine_schedule(T)
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
    i = np.arange(T)
    b = np.minimum(1 - f((i + 1) / T) / f(i / T), 0.999)
    np.testing.assert_allclose(np.asarray(s.betas), b, rtol=1e-5)
    # abar tracks f(t)/f(0) wherever the cap is not active
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[:-5], (f((i + 1) / T) / f(0))[:-5], rtol=1e-4)


def test_schedules_match_diffusers():
    diffusers = pytest.importorskip("diffusers", reason="diffusers (interop extra) not installed")
    for name, dname in (("linear", "linear"), ("cosine", "squaredcos_cap_v2")):
        ref = diffusers.DDPMScheduler(num_train_timesteps=300, beta_schedule=dname)
        ours = ddpm.make_schedule(name, 300)
        np.testing.assert_allclose(np.asarray(ours.betas), ref.betas.numpy(), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(), rtol=5e-5)  # diffusers: float32 cumprod


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2 ** 31 - 1))
def test_eps_loss_closed_form(seed):
    """The loss equals mean((f(x_t, t) - eps)^2) recomputed in float64 with the same t and noise."""
    sched = ddpm.linear_schedule(100)
    x0 = jax.random.normal(jax.random.PRNGKey(seed % 1000), (4, 3, 3, 1))
    key = jax.random.PRNGKey(seed)
    eps_fn = lambda p, x, t, c: p * x + 0.01 * t[:, None, None, None]
    loss = float(ddpm.eps_loss(eps_fn, 0.7, sched, x0, key))
    kt, kn = jax.random.split(key)
    t = np.asarray(jax.random.randint(kt, (4,), 0, 100))
    n = np.asarray(jax.random.normal(kn, x0.shape), np.float64)
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 100))[t][:, None, None, None]
    xt = np.sqrt(ab) * np.asarray(x0, np.float64) + np.sqrt(1 - ab) * n
    ref = np.mean((0.7 * xt + 0.01 * t[:, None, None, None] - n) ** 2)
    assert math.isclose(loss, ref, rel_tol=1e-4)


def test_perfect_denoiser_has_zero_loss_and_recovers_x0():
    """An oracle that knows the noise has zero loss, and DDIM with it returns x0 exactly."""
    sched = ddpm.linear_schedule(1000)
    x0 = jnp.clip(jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 1)), -1, 1)
    # eps implied by x_t for a fixed x0: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
    def oracle(p, x, t, c):
        ab = sched.alphas_cumprod[t][:, None, None, None]
        return (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
    assert float(ddpm.eps_loss(oracle, None, sched, x0, jax.random.PRNGKey(1))) < 1e-8
    out = ddpm.ddim_sample(oracle, None, sched, (2, 4, 4, 1), jax.random.PRNGKey(2), num_steps=20)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=1e-4)


def test_ddpm_step_closed_form():
    sched = ddpm.linear_schedule(50)
    b = np.linspace(1e-4, 0.02, 50)
    ab = np.cumprod(1 - b)
    rng = np.random.default_rng(0)
    x, eps, z = (rng.standard_normal((2, 3)) for _ in range(3))
    for t in (0, 1, 30, 49):
        ab_prev = ab[t - 1] if t > 0 else 1.0
        x0 = np.clip((x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t]), -1, 1)
        mean = np.sqrt(ab_prev) * b[t] / (1 - ab[t]) * x0 + np.sqrt(1 - b[t]) * (1 - ab_prev) / (1 - ab[t]) * x
        var = (1 - ab_prev) / (1 - ab[t]) * b[t]
        ref = mean + (np.sqrt(var) * z if t > 0 else 0)
        out = ddpm.ddpm_step(sched, jnp.asarray(x, jnp.float32), jnp.asarray(eps, jnp.float32), jnp.asarray(t),
                             jnp.asarray(z, jnp.float32))
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)


def test_ddim_matches_diffusers_scheduler():
    diffusers = pytest.importorskip("diffusers", reason="diffusers (interop extra) not installed")
    torch = pytest.importorskip("torch", reason="torch (interop extra) not installed")
    T, n = 1000, 25
    sched = ddpm.linear_schedule(T)
    eps_fn = lambda p, x, t, c: jnp.tanh(p * x) + 1e-3 * t[:, None, None, None]
    x_T = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 1))
    ours = ddpm.ddim_sample(eps_fn, 0.5, sched, (2, 4, 4, 1), jax.random.PRNGKey(1), num_steps=n, x_T=x_T)
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=True)
    ref.set_timesteps(n)
    np.testing.assert_array_equal(ref.timesteps.numpy(), ddpm.ddim_timesteps(T, n))
    x = torch.from_numpy(np.array(x_T))
    for t in ref.timesteps:
        e = torch.tanh(0.5 * x) + 1e-3 * float(t)
        x = ref.step(e, t, x, eta=0.0).prev_sample
    np.testing.assert_allclose(np.asarray(ours), x.numpy(), atol=2e-4)


def test_samplers_jit_and_are_reproducible():
    sched = ddpm.linear_schedule(20)
    eps_fn = lambda p, x, t, c: p * x
    a = ddpm.ddpm_sample(eps_fn, 0.1, sched, (3, 2, 2, 1), jax.random.PRNGKey(4))
    b = ddpm.ddpm_sample(eps_fn, 0.1, sched, (3, 2, 2, 1), jax.random.PRNGKey(4))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = ddpm.ddpm_sample(eps_fn, 0.1, sched, (3, 2, 2, 1), jax.random.PRNGKey(5))
    assert not np.allclose(np.asarray(a), np.asarray(c))  # the key matters


def test_bad_schedule_inputs():
    with pytest.raises(ValueError, match="unknown"):
        ddpm.make_schedule("sigmoid")
    with pytest.raises(ValueError, match="num_steps"):
        ddpm.ddim_timesteps(100, 0)
    with pytest.raises(ValueError, match="beta"):
        ddpm.linear_schedule(10, 0.5, 0.1)
