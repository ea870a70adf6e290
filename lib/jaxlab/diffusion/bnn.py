"""Bayesian fine-tuning of a diffusion UNet as a transform over its parameter pytree (arXiv 2405.19931).

The model stays an ordinary Flax module; a :class:`Posterior` (optax-style record of pure functions)
turns a *variational state* into the concrete ``params`` the module is applied with:

    post  = mean_field(mask, init_sigma=0.01)            # or lora(mask, rank=4, ...)
    state = post.init(pretrained, key)                    # mu <- pretrained, sigma <- init_sigma
    loss  = diffusion_loss(post.sample(state, key_t)) + lam * post.kl(state)   # one weight draw per step
    state = post.project(optax.apply_updates(state, updates))                 # sigma clamp (authors')
    params_for_inference = post.mean(state)              # mean weights: sampling cost == base model

Faithful to the authors' code (``bayesian.py``, ``models/layers/linear.py``):
  * Bayesian leaves = ``nn.Linear`` weights *and* biases inside down/mid/up blocks, i.e. the
    self-attention q/k/v/out projections of UNet2DModel; time-embedding projections, convs and
    norms stay deterministic (:data:`DREAMBOOTH_INCLUDE`). Non-Bayesian leaves are still trained.
  * ``mu`` starts at the pretrained weights; ``sigma`` is a direct parameter filled with
    ``init_sigma`` and clamped to ``>= 1e-7`` (``parametrization='direct'``, applied by
    :attr:`Posterior.project` after every update, mirroring the in-place clamp before each forward).
  * ``W = mu + sigma * eps`` with ONE ``eps`` draw per step (shared by the whole batch).
  * Regulariser ``kl(state)`` = sum of elementwise closed-form KLs between N(mu_pre, prior_sigma^2)
    and N(mu, sigma^2) with negative elements zeroed; direction ``'prior_posterior'`` is the
    authors' KL(prior || q), ``'posterior_prior'`` the usual ELBO KL(q || prior). The released
    run scripts use weight ``lambda1 = 0``; the weight lives in the caller (``fine_tune``).
  * LoRA variant (:func:`lora`): rank-r ``down`` (deterministic, N(0, (1/r)^2) init) and Bayesian
    ``up`` (mu 0, sigma init_sigma, prior mean 0) on each masked Dense kernel; the base is frozen.
[our choice] ``parametrization='softplus'`` (sigma = softplus(rho)) is offered as a variant.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Posterior", "DREAMBOOTH_INCLUDE", "LORA_INCLUDE", "bayesian_mask", "mean_field", "lora",
           "gaussian_kl", "path_str", "select", "count_selected"]

# Authors' DreamBooth rule mapped to UNet2DModel names: Linear layers of self-attention inside
# down/mid/up blocks (UNet2DModel has no feed-forward or cross-attention).
DREAMBOOTH_INCLUDE = r"^(down_blocks_\d+|mid_block|up_blocks_\d+)/attentions_\d+/(to_q|to_k|to_v|to_out_0)/(kernel|bias)$"
# LoRA processors sit on every attention projection; only kernels get adapters.
LORA_INCLUDE = r"^(down_blocks_\d+|mid_block|up_blocks_\d+)/attentions_\d+/(to_q|to_k|to_v|to_out_0)/kernel$"


class Posterior(NamedTuple):
    """A variational posterior over a UNet's params, as pure functions.

    init(pretrained, key) -> state            state is a dict pytree (orbax-checkpointable)
    sample(state, key) -> params              one weight sample (reparametrised, differentiable)
    mean(state) -> params                     mean weights for inference (no extra cost)
    kl(state) -> scalar                       regulariser toward the pretrained model (sum, nats)
    project(state) -> state                   sigma clamp after an optimizer step
    trainable(state) -> bool pytree           False for frozen entries (prior means, LoRA base)
    sigmas(state) -> dict pytree              effective sigmas (for logging)
    """

    init: Callable
    sample: Callable
    mean: Callable
    kl: Callable
    project: Callable
    trainable: Callable
    sigmas: Callable


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def bayesian_mask(params: Any, include: str = DREAMBOOTH_INCLUDE, exclude: str | None = None) -> Any:
    """Bool pytree like ``params``: True where the '/'-joined leaf path matches ``include`` and not ``exclude``."""
    inc, exc = re.compile(include), re.compile(exclude) if exclude else None
    mask = jax.tree_util.tree_map_with_path(
        lambda p, _: bool(inc.search(path_str(p))) and not (exc and exc.search(path_str(p))), params)
    if not any(jax.tree_util.tree_leaves(mask)):
        raise ValueError(f"bayesian mask selects no leaf (include={include!r}, exclude={exclude!r}): "
                         "check the param names, e.g. with jax.tree_util.tree_flatten_with_path")
    return mask


def select(tree: Any, mask: Any) -> dict:
    """Nested dict holding only ``tree``'s leaves where ``mask`` is True (same key paths)."""
    out: dict = {}
    for (p, x), m in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree_util.tree_leaves(mask)):
        if m:
            d = out
            keys = [str(k.key) for k in p]
            for k in keys[:-1]:
                d = d.setdefault(k, {})
            d[keys[-1]] = x
    return out


def _merge(tree: Any, sub: dict, fn: Callable) -> Any:
    """``tree`` with each leaf present in ``sub`` replaced by ``fn(leaf, sub_leaf, path)``."""
    flat = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(sub)[0]}
    return jax.tree_util.tree_map_with_path(
        lambda p, x: fn(x, flat[path_str(p)], path_str(p)) if path_str(p) in flat else x, tree)


def count_selected(mask: Any, params: Any) -> int:
    return int(sum(np.size(x) for x, m in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask)) if m))


def gaussian_kl(mu_p, sigma_p, mu_q, sigma_q) -> jax.Array:
    """Elementwise KL(N(mu_p, sigma_p^2) || N(mu_q, sigma_q^2)) in nats."""
    return (jnp.log(sigma_q / sigma_p) + (sigma_p ** 2 + (mu_p - mu_q) ** 2) / (2 * sigma_q ** 2) - 0.5)


def _kl_sum(mu_pre, prior_sigma, mu, sigma, direction):
    if direction == "prior_posterior":
        k = gaussian_kl(mu_pre, prior_sigma, mu, sigma)
    else:
        k = gaussian_kl(mu, sigma, mu_pre, prior_sigma)
    return jnp.sum(jnp.maximum(k, 0.0))  # authors zero negative (round-off) elements


def _check(parametrization, direction, init_sigma, prior_sigma):
    if parametrization not in ("direct", "softplus"):
        raise ValueError(f"parametrization={parametrization!r}: use 'direct' (authors) or 'softplus'")
    if direction not in ("prior_posterior", "posterior_prior"):
        raise ValueError(f"kl_direction={direction!r}: use 'prior_posterior' (authors) or 'posterior_prior' (ELBO)")
    if not (np.isfinite(init_sigma) and init_sigma >= 0):
        raise ValueError(f"init_sigma={init_sigma} must be >= 0")
    if not (np.isfinite(prior_sigma) and prior_sigma >= 0):
        raise ValueError(f"prior_sigma={prior_sigma} must be > 0 (0 only for a deterministic posterior that is "
                         "never regularised, e.g. the init_sigma=0 equality check)")


def _prior_sigma_for_kl(prior_sigma):
    if prior_sigma <= 0:
        raise ValueError(f"prior_sigma={prior_sigma}: the KL to a zero-width prior is infinite; pass prior_sigma > 0 "
                         "(it defaults to init_sigma), or train with kl_weight=0")
    return prior_sigma


def _sig_fns(parametrization, min_sigma):
    if parametrization == "direct":
        to_raw = lambda s: s
        to_sigma = lambda r: jnp.maximum(r, min_sigma)
    else:
        to_raw = lambda s: np.log(np.expm1(max(s, 1e-12)))
        to_sigma = lambda r: jax.nn.softplus(r) + min_sigma
    return to_raw, to_sigma


def _noise_tree(sub: dict, key) -> dict:
    leaves, treedef = jax.tree_util.tree_flatten(sub)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)])


def mean_field(mask: Any, init_sigma: float = 0.01, prior_sigma: float | None = None,
               parametrization: str = "direct", min_sigma: float = 1e-7,
               kl_direction: str = "prior_posterior") -> Posterior:
    """Mean-field Gaussian over the leaves where ``mask`` is True (all other leaves deterministic).

    state = {'mu': params tree, 'sigma': raw sigma sub-tree, 'prior_mu': pretrained sub-tree (frozen)}.
    ``prior_sigma`` defaults to ``init_sigma`` (released scripts: both 0.01). ``min_sigma=0`` with
    ``init_sigma=0`` makes ``sample`` return ``mu`` exactly.
    """
    prior_sigma = init_sigma if prior_sigma is None else prior_sigma
    _check(parametrization, kl_direction, init_sigma, prior_sigma)
    to_raw, to_sigma = _sig_fns(parametrization, min_sigma)

    def init(pretrained, key=None):
        del key
        sub = select(pretrained, mask)
        raw = jax.tree_util.tree_map(lambda x: jnp.full(jnp.shape(x), to_raw(init_sigma), jnp.result_type(x)), sub)
        return {"mu": jax.tree_util.tree_map(jnp.asarray, pretrained), "sigma": raw,
                "prior_mu": jax.tree_util.tree_map(jnp.asarray, sub)}

    def sigmas(state):
        return jax.tree_util.tree_map(to_sigma, state["sigma"])

    def sample(state, key):
        eps = _noise_tree(state["sigma"], key)
        noise = jax.tree_util.tree_map(lambda s, e: to_sigma(s) * e, state["sigma"], eps)
        return _merge(state["mu"], noise, lambda m, n, _: m + n)

    def mean(state):
        return state["mu"]

    def kl(state):
        mu_sub = select(state["mu"], mask)
        ps = _prior_sigma_for_kl(prior_sigma)
        terms = jax.tree_util.tree_map(lambda mp, m, r: _kl_sum(mp, ps, m, to_sigma(r), kl_direction),
                                       state["prior_mu"], mu_sub, state["sigma"])
        return sum(jax.tree_util.tree_leaves(terms), jnp.float32(0.0))

    def project(state):
        if parametrization != "direct":
            return state
        return {**state, "sigma": jax.tree_util.tree_map(lambda r: jnp.maximum(r, min_sigma), state["sigma"])}

    def trainable(state):
        t = jax.tree_util.tree_map(lambda _: True, state)
        t["prior_mu"] = jax.tree_util.tree_map(lambda _: False, state["prior_mu"])
        return t

    return Posterior(init, sample, mean, kl, project, trainable, sigmas)


def lora(mask: Any, rank: int = 4, init_sigma: float = 0.01, prior_sigma: float | None = None,
         parametrization: str = "direct", min_sigma: float = 1e-7,
         kl_direction: str = "prior_posterior") -> Posterior:
    """Bayesian LoRA: ``W' = W + down @ up`` on each masked 2-D kernel ``W [in, out]``.

    ``down [in, r]`` deterministic, N(0, (1/r)^2) init; ``up [r, out]`` Bayesian with mu 0 and sigma
    ``init_sigma``; prior N(0, prior_sigma^2). ``base`` is frozen (``trainable`` is False there).
    ``mean`` merges the adapters into the kernels, so inference runs the base model unchanged.
    """
    if rank < 1:
        raise ValueError(f"rank={rank}: must be >= 1")
    prior_sigma = init_sigma if prior_sigma is None else prior_sigma
    _check(parametrization, kl_direction, init_sigma, prior_sigma)
    to_raw, to_sigma = _sig_fns(parametrization, min_sigma)

    def init(pretrained, key):
        sub = select(pretrained, mask)
        bad = [p for p, x in jax.tree_util.tree_flatten_with_path(sub)[0] if jnp.ndim(x) != 2]
        if bad:
            raise ValueError(f"lora mask selects non-2-D leaves {[path_str(p) for p in bad][:4]}: select Dense kernels only")
        leaves, treedef = jax.tree_util.tree_flatten(sub)
        keys = jax.random.split(key, len(leaves))
        down = [jax.random.normal(k, (x.shape[0], rank), jnp.float32) / rank for k, x in zip(keys, leaves)]
        return {"base": jax.tree_util.tree_map(jnp.asarray, pretrained),
                "down": jax.tree_util.tree_unflatten(treedef, down),
                "up_mu": jax.tree_util.tree_unflatten(treedef, [jnp.zeros((rank, x.shape[1])) for x in leaves]),
                "up_sigma": jax.tree_util.tree_unflatten(
                    treedef, [jnp.full((rank, x.shape[1]), to_raw(init_sigma)) for x in leaves])}

    def _apply(state, ups):
        delta = jax.tree_util.tree_map(lambda d, u: d @ u, state["down"], ups)
        base = jax.lax.stop_gradient(state["base"])
        return _merge(base, delta, lambda w, dw, _: w + dw)

    def sample(state, key):
        eps = _noise_tree(state["up_mu"], key)
        ups = jax.tree_util.tree_map(lambda m, r, e: m + to_sigma(r) * e, state["up_mu"], state["up_sigma"], eps)
        return _apply(state, ups)

    def mean(state):
        return _apply(state, state["up_mu"])

    def kl(state):
        ps = _prior_sigma_for_kl(prior_sigma)
        terms = jax.tree_util.tree_map(lambda m, r: _kl_sum(jnp.zeros_like(m), ps, m, to_sigma(r), kl_direction),
                                       state["up_mu"], state["up_sigma"])
        return sum(jax.tree_util.tree_leaves(terms), jnp.float32(0.0))

    def project(state):
        if parametrization != "direct":
            return state
        return {**state, "up_sigma": jax.tree_util.tree_map(lambda r: jnp.maximum(r, min_sigma), state["up_sigma"])}

    def trainable(state):
        t = jax.tree_util.tree_map(lambda _: True, state)
        t["base"] = jax.tree_util.tree_map(lambda _: False, state["base"])
        return t

    def sigmas(state):
        return jax.tree_util.tree_map(to_sigma, state["up_sigma"])

    return Posterior(init, sample, mean, kl, project, trainable, sigmas)
