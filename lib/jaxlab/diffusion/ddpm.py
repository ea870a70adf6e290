"""DDPM in pure JAX: noise schedules, the epsilon-prediction loss, DDPM and DDIM samplers.

Conventions follow diffusers' ``DDPMScheduler``/``DDIMScheduler`` defaults so that results can be
checked against them: timesteps are integers ``0..T-1``, ``alpha_bar[t] = prod_{s<=t} (1 - beta_s)``,
predicted ``x0`` is clipped to ``[-clip, clip]`` (``clip_sample=True``), DDPM uses the
``fixed_small`` posterior variance and DDIM uses "leading" timestep spacing with
``set_alpha_to_one=True``.

The denoiser is any ``eps_fn(params, x [B,H,W,C], t [B] int32, cond) -> eps [B,H,W,C]``;
``cond`` (e.g. class labels ``[B]``) is passed through untouched and may be None. Samplers are
``lax.scan`` loops; they are wrapped in ``jax.jit`` with ``eps_fn``/``shape``/step counts static, so
pass the same ``eps_fn`` object to reuse the compiled sampler.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Schedule", "linear_schedule", "cosine_schedule", "make_schedule", "q_sample", "eps_loss",
           "ddpm_step", "ddpm_sample", "ddim_timesteps", "ddim_sample"]

EpsFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]


class Schedule(NamedTuple):
    """``betas``/``alphas_cumprod``: ``[T]`` float32; index ``t`` is timestep ``t`` (0-based)."""

    betas: jax.Array
    alphas_cumprod: jax.Array

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])


def _from_betas(betas: np.ndarray) -> Schedule:
    betas = np.asarray(betas, np.float64)
    return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(np.cumprod(1.0 - betas), jnp.float32))


def linear_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """Ho et al. (2020): ``beta_t = linspace(beta_start, beta_end, T)``."""
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps={num_timesteps}: need at least 2")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"betas ({beta_start}, {beta_end}) must satisfy 0 < beta_start <= beta_end < 1")
    return _from_betas(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64))


def cosine_schedule(num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal (2021), diffusers' ``squaredcos_cap_v2``:
    ``beta_i = min(1 - f((i+1)/T) / f(i/T), max_beta)``, ``f(u) = cos((u + s)/(1 + s) * pi/2)^2``."""
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps={num_timesteps}: need at least 2")
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = [min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), max_beta) for i in range(num_timesteps)]
    return _from_betas(np.array(betas))


def make_schedule(name: str, num_timesteps: int = 1000, **kw) -> Schedule:
    """``'linear'`` or ``'cosine'``."""
    if name == "linear":
        return linear_schedule(num_timesteps, **kw)
    if name == "cosine":
        return cosine_schedule(num_timesteps, **kw)
    raise ValueError(f"schedule {name!r} unknown: use 'linear' or 'cosine'")


def _bcast(a: jax.Array, x: jax.Array) -> jax.Array:
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Forward process ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``; ``t``: ``[B]`` int."""
    ab = schedule.alphas_cumprod[t]
    return _bcast(jnp.sqrt(ab), x0) * x0 + _bcast(jnp.sqrt(1.0 - ab), x0) * noise


def eps_loss(eps_fn: EpsFn, params: Any, schedule: Schedule, x0: jax.Array, key: jax.Array,
             cond: Any = None, per_example: bool = False) -> jax.Array:
    """The simple DDPM objective ``E_{t~U{0..T-1}, eps~N(0,I)} ||eps_fn(x_t, t) - eps||^2`` (mean over pixels).

    Returns a scalar (batch mean) or ``[B]`` with ``per_example=True``. One ``t`` and noise draw per example.
    """
    kt, kn = jax.random.split(key)
    t = jax.random.randint(kt, (x0.shape[0],), 0, schedule.num_timesteps)
    noise = jax.random.normal(kn, x0.shape, x0.dtype)
    pred = eps_fn(params, q_sample(schedule, x0, t, noise), t, cond)
    err = jnp.mean(jnp.square(pred - noise), axis=tuple(range(1, x0.ndim)))
    return err if per_example else jnp.mean(err)


def _x0_from_eps(x, eps, ab, clip):
    x0 = (x - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)
    return x0 if clip is None else jnp.clip(x0, -clip, clip)


def ddpm_step(schedule: Schedule, x: jax.Array, eps: jax.Array, t: jax.Array, noise: jax.Array,
              clip: float | None = 1.0) -> jax.Array:
    """One ancestral step ``x_t -> x_{t-1}`` (``t``: python/0-d int), diffusers' ``fixed_small`` variance."""
    ab = schedule.alphas_cumprod[t]
    ab_prev = jnp.where(t > 0, schedule.alphas_cumprod[jnp.maximum(t - 1, 0)], 1.0)
    beta = 1.0 - ab / ab_prev
    x0 = _x0_from_eps(x, eps, ab, clip)
    mean = (jnp.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (jnp.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)) * x
    var = jnp.maximum((1 - ab_prev) / (1 - ab) * beta, 1e-20)
    return mean + jnp.where(t > 0, jnp.sqrt(var), 0.0) * noise


@functools.partial(jax.jit, static_argnames=("eps_fn", "shape", "clip"))
def ddpm_sample(eps_fn: EpsFn, params: Any, schedule: Schedule, shape: tuple, key: jax.Array,
                cond: Any = None, clip: float | None = 1.0) -> jax.Array:
    """Ancestral sampling over all ``T`` steps from ``x_T ~ N(0, I)``; returns ``x_0`` of ``shape``."""
    k0, kl = jax.random.split(key)
    x = jax.random.normal(k0, shape)
    ts = jnp.arange(schedule.num_timesteps - 1, -1, -1)

    def body(x, inp):
        t, k = inp
        eps = eps_fn(params, x, jnp.full((shape[0],), t, jnp.int32), cond)
        return ddpm_step(schedule, x, eps, t, jax.random.normal(k, shape), clip), None

    x, _ = jax.lax.scan(body, x, (ts, jax.random.split(kl, ts.shape[0])))
    return x


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """diffusers' "leading" spacing: ``arange(num_steps) * (T // num_steps)``, descending."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps={num_steps} must be in [1, {num_timesteps}]")
    return (np.arange(num_steps) * (num_timesteps // num_steps))[::-1].astype(np.int32)


@functools.partial(jax.jit, static_argnames=("eps_fn", "shape", "num_steps", "clip"))
def ddim_sample(eps_fn: EpsFn, params: Any, schedule: Schedule, shape: tuple, key: jax.Array,
                cond: Any = None, num_steps: int = 50, eta: float = 0.0, clip: float | None = 1.0,
                x_T: jax.Array | None = None) -> jax.Array:
    """DDIM (Song et al. 2021) with ``num_steps`` steps; ``eta=0`` deterministic, ``eta=1`` DDPM-like.

    ``x_T`` (optional) replaces the initial noise drawn from ``key``.
    """
    k0, kl = jax.random.split(key)
    x = jax.random.normal(k0, shape) if x_T is None else x_T
    T = schedule.num_timesteps
    ts = jnp.asarray(ddim_timesteps(T, num_steps))
    ratio = T // num_steps

    def body(x, inp):
        t, k = inp
        eps = eps_fn(params, x, jnp.full((shape[0],), t, jnp.int32), cond)
        ab = schedule.alphas_cumprod[t]
        prev = t - ratio
        ab_prev = jnp.where(prev >= 0, schedule.alphas_cumprod[jnp.maximum(prev, 0)], 1.0)
        x0 = _x0_from_eps(x, eps, ab, clip)
        sigma = eta * jnp.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        x = jnp.sqrt(ab_prev) * x0 + jnp.sqrt(jnp.maximum(1 - ab_prev - sigma ** 2, 0.0)) * eps
        return x + sigma * jax.random.normal(k, shape), None

    x, _ = jax.lax.scan(body, x, (ts, jax.random.split(kl, num_steps)))
    return x
