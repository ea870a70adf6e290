"""Pill (Guo et al., AAAI 2026, arXiv 2407.15389): poison a compact chained subnet, look benign elsewhere.

No official code and no full text are available (spec section 2), so **every formula below is
[our choice]**, built on the confirmed outline: construction -> poisoning -> injection with a
two-step SimAdjust/DistAdjust. Outputs label runs "pill (ours)".

**Construction** (:func:`pill_mask`): a chain of one unit per layer through the *global* model,
re-searched every round ("dynamic pill search", the adaptive pattern). Layers are the
``kernel``/``bias`` pairs in parameter order (base layers, then the head). In the first layer the
unit is the one whose incoming weights have the largest (``search='max'``, default), smallest
(``'min'``) or a random (``'random'``) L1 norm. In each next layer the unit is the one most (least)
strongly connected to the previous pill unit: ``argmax_j sum_{r in rows(u_prev)} |K[..., r, j]|``
where ``rows`` is ``u_prev`` itself, or every flattened position of that channel after a
conv->dense flatten (NHWC: ``r % C_prev == u_prev``). The pill's parameters are each chosen
unit's incoming weights and bias; in the **last layer** (the classifier) they are the weights from
the previous pill unit to every class plus all class biases.

**Poisoning**: the base attack (any :class:`jaxlab.fl.robust.attacks.Attack`, with its own
knowledge setting) produces poisoned rows; only their pill coordinates are kept and rescaled so the
pill part has norm ``pill_norm * |g_hat|`` where ``g_hat`` is the benign estimate below
(the poison concentrates in the subnet; [our choice] ``pill_norm = 1``).

**Injection**: every attacker starts from its own honest update ``g_ref`` outside the pill
(the benign-looking carrier) and ``g_hat`` = the mean of the attackers' own honest updates
(the paper estimates the benign update from the compromised clients). Then

* **SimAdjust**: ``g = p + alpha * g_ref * (1 - M)`` with ``alpha >= 0`` found by bisection so
  that ``cos(g, g_hat)`` equals the median cosine of the attackers' honest updates to ``g_hat``;
* **DistAdjust**: ``g <- beta * g`` with ``beta > 0`` solving ``|beta g - g_hat| = `` the median
  distance of the honest updates to ``g_hat`` (the larger root; the closest point when none).
  Positive scaling keeps the cosine, so both metrics sit in the benign range.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from jaxlab.fl.robust.attacks import Attack, masked_mean

__all__ = ["pill_layers", "pill_mask", "sim_dist_adjust", "pill_attack", "SEARCHES"]

SEARCHES = ("max", "min", "random")


def pill_layers(params) -> list[tuple[tuple, jax.Array, jax.Array | None]]:
    """``[(path, kernel, bias)]`` in parameter (= flatten) order; a layer is a dict with a kernel."""
    layers = []

    def walk(tree, path):
        if isinstance(tree, dict) or hasattr(tree, "keys"):
            if "kernel" in tree:
                layers.append((path, tree["kernel"], tree.get("bias")))
                return
            for k in sorted(tree.keys()):
                walk(tree[k], path + (k,))

    walk(params, ())
    if len(layers) < 2:
        raise ValueError(f"pill needs a model with >= 2 layers that have a 'kernel' (found {len(layers)})")
    return layers


def _pick(score, search: str, key):
    if search == "max":
        return jnp.argmax(score)
    if search == "min":
        return jnp.argmin(score)
    if search == "random":
        return jax.random.randint(key, (), 0, score.shape[0])
    raise ValueError(f"unknown pill search {search!r}: choose one of {SEARCHES}")


def pill_mask(params, search: str = "max", key=None):
    """Flat ``[d]`` float mask (1 on the pill's parameters) and the chosen unit per layer."""
    layers = pill_layers(params)
    key = jax.random.PRNGKey(0) if key is None else key
    keys = jax.random.split(key, len(layers))
    mask_tree = jax.tree_util.tree_map(jnp.zeros_like, params)
    units = []
    prev_u, prev_out = None, None
    for li, (path, k, b) in enumerate(layers):
        last = li == len(layers) - 1
        n_in, n_out = k.shape[-2], k.shape[-1]
        absk = jnp.abs(k).reshape(-1, n_in, n_out).sum(0)  # [in, out], spatial taps summed
        if prev_u is None:
            rows = jnp.ones((n_in,), bool)
        elif n_in == prev_out:
            rows = jnp.arange(n_in) == prev_u
        elif n_in % prev_out == 0:
            rows = (jnp.arange(n_in) % prev_out) == prev_u
        else:
            raise ValueError(f"pill: layer {'/'.join(path)} has {n_in} inputs, not a multiple of the previous {prev_out} units")
        if last:
            km = jnp.broadcast_to(rows[:, None], (n_in, n_out))
            bm = jnp.ones((n_out,), bool) if b is not None else None
            u = jnp.asarray(-1)
        else:
            score = (absk * rows[:, None]).sum(0)
            u = _pick(score, search, keys[li])
            km = jnp.broadcast_to((jnp.arange(n_out) == u)[None, :], (n_in, n_out))
            bm = (jnp.arange(n_out) == u) if b is not None else None
        km = jnp.broadcast_to(km, k.shape).astype(k.dtype)
        node = mask_tree
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = dict(node[path[-1]], kernel=km, **({"bias": bm.astype(b.dtype)} if b is not None else {}))
        units.append(u)
        prev_u, prev_out = u, n_out
    return ravel_pytree(mask_tree)[0], jnp.stack(units)


def sim_dist_adjust(pill_part, carrier, g_hat, cos_target, dist_target, *, alpha_max: float = 100.0, iters: int = 40):
    """SimAdjust + DistAdjust for one attacker (vmapped by the caller); see the module docstring."""
    gh_n = jnp.linalg.norm(g_hat)

    def cos_of(alpha):
        g = pill_part + alpha * carrier
        return (g @ g_hat) / jnp.maximum(jnp.linalg.norm(g) * gh_n, 1e-30)

    def body(_, lohi):
        lo, hi = lohi
        mid = (lo + hi) / 2
        up = cos_of(mid) < cos_target
        return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

    lo, hi = lax.fori_loop(0, iters, body, (jnp.zeros(()), jnp.asarray(alpha_max, g_hat.dtype)))
    alpha = (lo + hi) / 2
    g = pill_part + alpha * carrier
    gg, gd = g @ g, g @ g_hat
    disc = gd * gd - gg * (gh_n ** 2 - dist_target ** 2)
    beta = jnp.where(disc >= 0, (gd + jnp.sqrt(jnp.maximum(disc, 0.0))) / jnp.maximum(gg, 1e-30),
                     gd / jnp.maximum(gg, 1e-30))
    return jnp.maximum(beta, 0.0) * g


def pill_attack(base: Attack, *, search: str = "max", pill_norm: float = 1.0, mask_fn: Callable | None = None) -> Attack:
    """Wraps ``base`` into a Pill attack. ``apply(updates, is_mal, key, ctx)`` needs
    ``ctx['params']`` (the broadcast global model) for the pill search."""
    if search not in SEARCHES:
        raise ValueError(f"unknown pill search {search!r}: choose one of {SEARCHES}")

    def apply(updates, is_mal, key, ctx=None):
        if ctx is None or "params" not in ctx:
            raise ValueError("pill: ctx['params'] (the global model) is needed for the pill search")
        k_base, k_search = jax.random.split(key)
        poisoned = base.apply(updates, is_mal, k_base, ctx)
        m = pill_mask(ctx["params"], search, k_search)[0] if mask_fn is None else mask_fn(ctx["params"])
        if m.shape != (updates.shape[1],):
            raise ValueError(f"pill: mask has {m.shape[0]} entries but updates have {updates.shape[1]} columns")
        g_hat = masked_mean(updates, is_mal)
        own = updates
        cos = (own @ g_hat) / jnp.maximum(jnp.linalg.norm(own, axis=1) * jnp.linalg.norm(g_hat), 1e-30)
        dist = jnp.linalg.norm(own - g_hat, axis=1)
        cos_t = jnp.nanmedian(jnp.where(is_mal, cos, jnp.nan))
        dist_t = jnp.nanmedian(jnp.where(is_mal, dist, jnp.nan))
        p = poisoned * m
        p = p * (pill_norm * jnp.linalg.norm(g_hat) / jnp.maximum(jnp.linalg.norm(p, axis=1, keepdims=True), 1e-30))
        carrier = own * (1 - m)
        mal = jax.vmap(sim_dist_adjust, in_axes=(0, 0, None, None, None))(p, carrier, g_hat, cos_t, dist_t)
        return jnp.where(is_mal[:, None], mal, updates)

    return Attack(f"pill+{base.name}", apply, base.poison_data, base.knowledge)
