"""Pill (Guo et al., AAAI 2026, arXiv 2407.15389): poison a compact chained subnet, look benign elsewhere.

No official code and no full text are available (spec section 2), so **every formula below is
[our choice]**, built on the confirmed outline: construction -> poisoning -> injection with a
two-step SimAdjust/DistAdjust. Outputs label runs "pill (ours)".

**Construction** (:func:`pill_mask`): a chain of one unit per layer through the *global* model,
re-searched every round ("dynamic pill search", the adaptive pattern). Layers are the
``kernel``/``bias`` pairs in parameter order (base layers, then the head). In the first layer the
unit is the one whose incoming weights have the largest (``search='max'``, default), smallest
(``'min'``) L1 norm, or a random one (``'random'``, drawn once per run: a stable pill). In each
next layer the unit is the one most (``'min'``: least; ``'random'``: a random unit) strongly
connected to the previous pill unit:
``argmax_j sum_{r in rows(u_prev)} |K[..., r, j]|`` where ``rows`` is ``u_prev`` itself, or every
flattened position of that channel after a conv->dense flatten (NHWC: ``r % C_prev == u_prev``).
The pill's parameters are each chosen unit's incoming weights and bias. **"Except the last two
layers"** [our choice, ``tail``]: ``'unit'`` (default) chains one unit through every layer but
the classifier, which keeps the weights from the previous pill unit to every class plus all class
biases; ``'full'`` chains one unit up to the last two layers, whose every unit is in the pill (the
penultimate layer through its weights from the previous pill unit, plus all its biases; then the
whole classifier), so the pill reaches every class through every penultimate unit. On the
28x28-digits CNN (conv 30, conv 50, fc 100, head 10; 119,440 parameters) the pill is 1.3% of
the parameters with ``'unit'`` and 2.9% with ``'full'``. **Re-search** [our choice]: every round
(measured on that CNN: the first two units settle after ~5 rounds and then stay, so a one-time
search after warm-up would pick almost the same pill).
[our choice] ``shared=False`` (default): attacker ``k`` (the k-th malicious row) starts its chain
at the ``k``-th ranked first-layer unit, so the attackers carry different pills (identical
pills make their updates alike, which FoolsGold-style similarity checks flag); ``shared=True``:
one pill for all.

**Knowledge** [our choice, for a like-for-like comparison]: Pill observes exactly what its base
attack observes (``base.knowledge``: the benign updates for the full-knowledge attacks, the
attackers' own honest updates for ``"own"``, the paper's partial-knowledge setting). ``g_hat`` is
the mean of the observed updates, and the **benign targets** are quantiles, over the observed
updates, of their cosine to ``g_hat`` (``cos_t``: the ``1 - benign_quantile`` quantile) and of
their distance to ``g_hat`` (``dist_t``: the ``benign_quantile`` quantile). [our choice]
``benign_quantile = 0.05``: the malicious update looks like the most typical 5% of benign ones.
(With the median, 0.5, the attacker sits at a median benign distance from the mean, and Krum,
which keeps the single most central update, never picked it: measured 0 of 120 attacker updates
kept on the digits matrix, /work/runs/robust_pill_v2_median; 0.05 was chosen after that run.)

**Poisoning**: the base attack (any :class:`jaxlab.fl.robust.attacks.Attack`) produces its
malicious rows; the poison is each row's deviation from the benign estimate, ``row - g_hat``,
restricted to the pill and normalised: ``p = M (row - g_hat) / |M (row - g_hat)|`` (for sign-flip
and Min-Max this is ``-g_hat`` on the pill, for Fang's attacks the per-coordinate push away from
the benign side). Only the direction comes from the base attack; the magnitude comes from the
injection, so attacks that differ only in their scale (sign-flip, Min-Max) give the same pill.
**What the poison deviates from** [our choice, ``pill_base``]: ``'zero'`` (default; the pill
coordinates are ``s p`` alone) or ``'benign'`` (they are ``a M g_hat + s p``: the benign estimate
on the pill, scaled with the rest of the benign-looking part, plus the poison). ``'benign'`` is
the reading nearer the outline's ``g_ref (1 - M) + attack(G) M``: at ``a = 1`` and
``s = |M (row - g_hat)|`` it writes the base attack's own values into the pill; and ``s = 0``
(no poison) is then a benign-looking update, so the injection can always fall back to it.

**Injection** (:func:`stealth_coefficients`): the carrier is a benign-looking update outside the
pill, ``c = (1 - M) (g_hat + carrier_mix (g_own - g_hat))`` with the attacker's own honest update
``g_own`` ([our choice] ``carrier_mix = 0.5``: halfway between the benign mean and the attacker's
own update; 1 keeps the attacker's own update, which already sits at the edge of the benign range
for half of the attackers and leaves no room for a pill). The malicious update is
``g = s p + a (c + b)`` (``b`` = the pill base above) with the **largest** pill scale ``s`` for
which ``cos(g, g_hat) >= cos_t`` (SimAdjust) and ``|g - g_hat| <= dist_t`` (DistAdjust), solved
exactly in the plane of ``p`` and ``c + b``; ``pill_norm`` multiplies that scale (1 = the most
poison that still looks benign; > 1 is a louder pill that leaves the benign range, for
dose-response studies). **When no ``s, a >= 0`` meet both bounds** [our choice, ``fallback``]:
``'honest'`` (default) sends the attacker's honest update that round; ``'closer'`` retries with
the carrier moved towards the benign mean (``carrier_mix`` times 1/2, 1/4, 0) and uses the first
feasible one (honest only if none is). The paper's Algorithm 1 always adjusts and injects; with
``'honest'`` the 28x28-digits CNN attackers (10 clients, non-IID) injected in only 10-33% of the
rounds (measured with ``benign`` knowledge, /work/scratch diagnostics), i.e. Pill mostly did not
attack; with ``'closer'`` and ``pill_base='benign'`` they inject every round.

History of this module: the first version rescaled the pill to ``|g_hat|`` and then scaled the
*whole* update (pill included) to the target distance after inflating the carrier for the cosine,
which shrank the pill below the benign updates' own pill parts (measured: 0.004-0.08 vs 0.07-0.15
in norm), i.e. the injection removed the poison. The joint solve above keeps it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxlab.fl.robust.attacks import Attack, masked_mean, observed_mask

__all__ = ["pill_layers", "pill_mask", "stealth_coefficients", "pill_attack", "SEARCHES", "TAILS", "FALLBACKS", "PILL_BASES", "DESIGN"]

SEARCHES = ("max", "min", "random")
TAILS = ("unit", "full")
FALLBACKS = ("honest", "closer")
PILL_BASES = ("zero", "benign")
DESIGN = "stealth-v3"  # recorded with every Pill result; bump it when the attack changes


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


def _pick(score, search: str, key, rank=0):
    rank = jnp.clip(rank, 0, score.shape[0] - 1)
    if search == "max":
        return jnp.argsort(-score)[rank]
    if search == "min":
        return jnp.argsort(score)[rank]
    if search == "random":
        return jax.random.permutation(key, score.shape[0])[rank]
    raise ValueError(f"unknown pill search {search!r}: choose one of {SEARCHES}")


def pill_mask(params, search: str = "max", key=None, rank=0, tail: str = "unit"):
    """Flat ``[d]`` float mask (1 on the pill's parameters) and the chosen unit per layer (-1 for a
    layer that keeps every unit). ``rank`` (may be traced) picks the ``rank``-th best first-layer
    unit instead of the best (per-attacker pills); ``key`` drives ``'random'``.

    ``tail`` says how the blueprint's "one unit per layer, except the last two layers" treats those
    two layers [our choice; the paper's text is not available]: ``'unit'`` (default) picks one unit
    in every layer but the classifier, which keeps the weights from that unit to every class plus
    all class biases; ``'full'`` picks one unit per layer up to the last two, then keeps *every*
    unit of the penultimate layer (only its weights from the previous pill unit, plus all its
    biases) and the whole classifier, so the pill reaches every class through every penultimate
    unit (needs >= 3 layers, else the pill would be the whole model)."""
    if tail not in TAILS:
        raise ValueError(f"unknown pill tail {tail!r}: choose one of {TAILS}")
    layers = pill_layers(params)
    if tail == "full" and len(layers) < 3:
        raise ValueError(f"pill tail='full' needs a model with >= 3 layers (found {len(layers)}): with 2 the "
                         "pill is the whole model; use tail='unit'")
    key = jax.random.PRNGKey(0) if key is None else key
    keys = jax.random.split(key, len(layers))
    mask_tree = jax.tree_util.tree_map(jnp.zeros_like, params)
    units = []
    prev_u, prev_out = None, None
    n_full = 1 if tail == "unit" else 2   # trailing layers that keep every unit
    for li, (path, k, b) in enumerate(layers):
        last = li >= len(layers) - n_full
        n_in, n_out = k.shape[-2], k.shape[-1]
        absk = jnp.abs(k).reshape(-1, n_in, n_out).sum(0)  # [in, out], spatial taps summed
        if prev_u is None:
            rows = jnp.ones((n_in,), bool)
        elif isinstance(prev_u, str):           # the previous layer kept every unit
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
            u = _pick(score, search, keys[li], rank if prev_u is None else 0)
            km = jnp.broadcast_to((jnp.arange(n_out) == u)[None, :], (n_in, n_out))
            bm = (jnp.arange(n_out) == u) if b is not None else None
        km = jnp.broadcast_to(km, k.shape).astype(k.dtype)
        node = mask_tree
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = dict(node[path[-1]], kernel=km, **({"bias": bm.astype(b.dtype)} if b is not None else {}))
        units.append(u)
        prev_u, prev_out = ("all" if last else u), n_out
    return ravel_pytree(mask_tree)[0], jnp.stack(units)


def stealth_coefficients(pill_dir, carrier, g_hat, cos_target, dist_target, *, pill_base=None, tol: float = 1e-4):
    """SimAdjust + DistAdjust for one attacker (vmapped by the caller) [our choice; the paper's
    formulas are not public]: the largest pill scale ``s`` and a weight ``a >= 0`` of the
    benign-looking part ``q = carrier + pill_base`` with

        g = s * pill_dir + a * q,   cos(g, g_hat) >= cos_target,   |g - g_hat| <= dist_target,   s >= 0.

    ``pill_dir [d]`` is unit norm and zero off the pill; ``carrier [d]`` is zero on the pill;
    ``pill_base [d]`` (default 0) is zero off the pill: the benign values the poison deviates from
    on the pill (``M g_hat`` for ``pill_base='benign'`` in :func:`pill_attack`). The problem lives
    in the plane of ``p = pill_dir`` and ``q``: with ``kappa = q.p``, ``q_perp = q - kappa p`` and the
    orthonormal coordinates ``(x, y) = (s + a kappa, a |q_perp|)``, the distance bound is a disk
    centred on the projection ``(p.g_hat, q_perp.g_hat/|q_perp|)`` of ``g_hat`` (radius^2 = dist^2 -
    |part of g_hat off the plane|^2), the cosine bound is a cone around the same centre ray, and the
    objective ``s = x - (kappa/|q_perp|) y`` is linear, so its maximum over the convex feasible set is
    at one of a handful of points: the disk's extreme point along the objective, the cone's two
    boundary rays meeting the circle, the x axis (``a = 0``) and the line ``s = 0`` meeting the
    circle. With ``pill_base = 0``, ``kappa = 0`` and the objective is ``x`` (the disk's rightmost
    point). Returns ``(s, a, ok)``; ``ok`` is False when no point with ``s >= 0, a >= 0`` meets both
    bounds. Exact up to float rounding: no bisection."""
    dt = g_hat.dtype
    q = carrier if pill_base is None else carrier + pill_base
    kappa = pill_dir @ q
    q_perp = q - kappa * pill_dir
    G = g_hat @ g_hat
    sqG = jnp.sqrt(jnp.maximum(G, 1e-30))
    C = jnp.sqrt(jnp.maximum(q_perp @ q_perp, 1e-30))
    k = kappa / C                               # objective s = x - k y
    ax = pill_dir @ g_hat                       # centre, x
    by = (q_perp @ g_hat) / C                   # centre, y
    resid2 = jnp.maximum(G - ax * ax - by * by, 0.0)
    R2 = dist_target ** 2 - resid2
    R = jnp.sqrt(jnp.maximum(R2, 0.0))
    t = jnp.asarray(cos_target, dt)
    D2 = jnp.asarray(dist_target, dt) ** 2

    th0 = jnp.arctan2(by, ax)
    r0 = jnp.sqrt(ax * ax + by * by)
    phi = jnp.arccos(jnp.clip(t * sqG / jnp.maximum(r0, 1e-30), -1.0, 1.0))
    # the cone's boundary rays meet the circle at rho = t|g_hat| +- sqrt(dist^2 - G (1 - t^2))
    disc = D2 - G * (1.0 - t * t)
    sq = jnp.sqrt(jnp.maximum(disc, 0.0))
    wn = jnp.sqrt(1.0 + k * k)
    xs, ys = [ax + R / wn], [by - R * k / wn]   # the disk's extreme point along (1, -k)
    for sgn in (1.0, -1.0):
        dx, dy = jnp.cos(th0 + sgn * phi), jnp.sin(th0 + sgn * phi)
        for rho in (t * sqG + sq, t * sqG - sq):
            rho = jnp.where(disc >= 0, rho, -1.0)
            xs.append(rho * dx)
            ys.append(rho * dy)
    xs.append(ax + jnp.sqrt(jnp.maximum(R2 - by * by, 0.0)))   # the x axis (a = 0)
    ys.append(jnp.where(R2 >= by * by, 0.0, -1.0))
    # the line s = 0, i.e. (x, y) = (k y, y), meets the circle where
    # (1 + k^2) y^2 - 2 (k ax + by) y + ax^2 + by^2 - R^2 = 0
    qb = k * ax + by
    qd = qb * qb - (1.0 + k * k) * (ax * ax + by * by - R2)
    for sgn in (1.0, -1.0):
        yl = jnp.where(qd >= 0, (qb + sgn * jnp.sqrt(jnp.maximum(qd, 0.0))) / (1.0 + k * k), -1.0)
        xs.append(k * yl)
        ys.append(yl)
    x, y = jnp.stack(xs), jnp.stack(ys)
    obj = x - k * y
    dot = ax * x + by * y
    nrm = jnp.sqrt(x * x + y * y)
    scale = jnp.maximum(G + D2, 1e-30)
    feasible = ((dot >= t * sqG * nrm - tol * scale) & ((x - ax) ** 2 + (y - by) ** 2 <= R2 + tol * scale)
                & (R2 >= -tol * scale) & (obj >= -tol * jnp.sqrt(scale)) & (y >= -tol * jnp.sqrt(scale)))
    best = jnp.argmax(jnp.where(feasible, obj, -jnp.inf))
    ok = jnp.any(feasible)
    s = jnp.where(ok, jnp.maximum(obj[best], 0.0), 0.0)
    a = jnp.where(ok, jnp.maximum(y[best], 0.0) / C, 0.0)
    return s, a, ok


def pill_attack(base: Attack, *, search: str = "max", pill_norm: float = 1.0, carrier_mix: float = 0.5,
                shared: bool = False, knowledge: str | None = None, benign_quantile: float = 0.05,
                tail: str = "unit", fallback: str = "honest", pill_base: str = "zero",
                mask_fn: Callable | None = None) -> Attack:
    """Wraps ``base`` into a Pill attack (see the module docstring for every choice).

    ``apply(updates [n, d], is_mal [n], key, ctx)`` needs ``ctx['params']`` (the broadcast global
    model) for the pill search. ``knowledge`` overrides the base attack's; ``mask_fn(params) -> [d]``
    replaces the search with a fixed pill (tests, ablations)."""
    if search not in SEARCHES:
        raise ValueError(f"unknown pill search {search!r}: choose one of {SEARCHES}")
    if tail not in TAILS:
        raise ValueError(f"unknown pill tail {tail!r}: choose one of {TAILS}")
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown pill fallback {fallback!r}: choose one of {FALLBACKS}")
    if pill_base not in PILL_BASES:
        raise ValueError(f"unknown pill_base {pill_base!r}: choose one of {PILL_BASES}")
    if not 0.0 <= float(carrier_mix) <= 1.0:
        raise ValueError(f"carrier_mix={carrier_mix!r} must be in [0, 1]")
    # carrier mixes tried in order; the first one whose SimAdjust/DistAdjust solve is feasible is used
    mixes = (float(carrier_mix),) if fallback == "honest" else tuple(float(carrier_mix) * f for f in (1.0, 0.5, 0.25, 0.0))
    if not float(pill_norm) >= 0.0:
        raise ValueError(f"pill_norm={pill_norm!r} must be >= 0 (1 = the largest pill that looks benign)")
    if not 0.0 <= float(benign_quantile) <= 1.0:
        raise ValueError(f"benign_quantile={benign_quantile!r} must be in [0, 1] (0.5: the median benign update)")
    knowledge = base.knowledge if knowledge is None else knowledge
    observed_mask(jnp.zeros(1, bool), knowledge)  # validates the name early

    def apply(updates, is_mal, key, ctx=None):
        if ctx is None or "params" not in ctx:
            raise ValueError("pill: ctx['params'] (the global model) is needed for the pill search")
        k_base = jax.random.fold_in(key, 0)
        k_search = jax.random.PRNGKey(17)  # a 'random' pill is drawn once per run, not per round
        poisoned = base.apply(updates, is_mal, k_base, ctx)
        if mask_fn is not None:
            m = jnp.asarray(mask_fn(ctx["params"]))
            if m.shape != (updates.shape[1],):
                raise ValueError(f"pill: mask_fn gave shape {m.shape} but updates have {updates.shape[1]} columns")
            m = jnp.broadcast_to(m, updates.shape)
        elif shared:
            m = jnp.broadcast_to(pill_mask(ctx["params"], search, k_search, tail=tail)[0], updates.shape)
        else:
            ranks = jnp.cumsum(is_mal) - 1
            m = jax.vmap(lambda r: pill_mask(ctx["params"], search, k_search, r, tail)[0])(ranks)
        if m.shape != updates.shape:
            raise ValueError(f"pill: mask has shape {m.shape[1:]} but updates have {updates.shape[1]} columns")
        m = m.astype(updates.dtype)
        obs = observed_mask(is_mal, knowledge)
        g_hat = masked_mean(updates, obs)
        cos = (updates @ g_hat) / jnp.maximum(jnp.linalg.norm(updates, axis=1) * jnp.linalg.norm(g_hat), 1e-30)
        dist = jnp.linalg.norm(updates - g_hat, axis=1)
        cos_t = jnp.nanquantile(jnp.where(obs, cos, jnp.nan), 1.0 - benign_quantile)
        dist_t = jnp.nanquantile(jnp.where(obs, dist, jnp.nan), benign_quantile)
        p = (poisoned - g_hat) * m
        p = p / jnp.maximum(jnp.linalg.norm(p, axis=1, keepdims=True), 1e-30)
        base_on_pill = g_hat * m if pill_base == "benign" else jnp.zeros_like(m)
        solve = jax.vmap(lambda p_, c_, b_: stealth_coefficients(p_, c_, g_hat, cos_t, dist_t, pill_base=b_))
        mal, done = updates, jnp.zeros(updates.shape[0], bool)
        for mix in mixes:
            carrier = (g_hat + mix * (updates - g_hat)) * (1 - m)
            s, a, ok = solve(p, carrier, base_on_pill)
            use = ok & ~done
            mal = jnp.where(use[:, None], (pill_norm * s)[:, None] * p + a[:, None] * (carrier + base_on_pill), mal)
            done = done | ok
        return jnp.where(is_mal[:, None], mal, updates)

    return Attack(f"pill+{base.name}", apply, base.poison_data, base.knowledge)
