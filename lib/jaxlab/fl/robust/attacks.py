"""Poisoning attacks as pure functions that rewrite the malicious rows of a stacked update matrix.

Conventions: those of :mod:`jaxlab.fl.robust.defenses` (pseudo-gradients ``g = w_t - w_local``,
``updates [n, d]``). Attackers **replace** the rows where ``is_mal [n]`` is True (their honest
updates are still in those rows when the attack runs, so partial-knowledge attackers can use them).

**What an attacker observes** (``knowledge``, spec pitfall 5):

* ``"benign"`` (default, full knowledge as in Fang et al. and NDSS'21): the benign clients' updates
  of this round (rows ``~is_mal``);
* ``"own"``: only the attackers' own honest updates (rows ``is_mal``; partial knowledge, Pill's
  and Fang's partial-knowledge setting);
* ``"all"``: every row.

The server's own root-set update is not observed [our choice; SkyMask's repo lets the attack see
it], with one labelled exception: ``fltrust_adaptive_root`` (equivalently ``make_attack(
"fltrust_adaptive", server_knowledge=True)``) also reads ``ctx['root_update']``, the full-knowledge
threat model of FLTrust's adaptive attack (Cao et al., NDSS'21), in which the attacker knows the
root dataset. Statistics over the observed rows are masked, so shapes stay static and everything is
jittable; the number of attackers ``f = is_mal.sum()`` may be traced.

Model-poisoning attacks (``ATTACKS``): ``gaussian``, ``sign_flip``, ``ipm``, ``lie``, ``fang_trim``,
``fang_krum``, ``min_max``, ``min_sum``, ``fltrust_adaptive``, ``fltrust_adaptive_root``. Data attacks: ``label_flip`` (``y -> C-1-y``) and
``backdoor`` (a trigger square on 50% of the attackers' samples relabelled to the target, then the
update scaled by ``n/f``; SkyMask ``main.py``). :func:`make_attack` returns the uniform
:class:`Attack` record.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.stats import norm

from jaxlab.fl.robust.defenses import check_updates, krum_scores, reduce_rows

__all__ = ["Attack", "ATTACKS", "KNOWLEDGE", "make_attack", "observed_mask", "masked_mean", "masked_std",
           "gaussian", "sign_flip", "ipm", "lie", "lie_z", "fang_trim", "fang_krum", "min_max", "min_sum",
           "agr_agnostic_gamma", "fltrust_adaptive", "fltrust_adaptive_objective", "add_trigger", "label_flip_data", "backdoor_data"]

KNOWLEDGE = ("benign", "own", "all")


def observed_mask(is_mal, knowledge: str = "benign"):
    """``[n]`` bool: the rows the attacker may read."""
    if knowledge == "benign":
        return ~is_mal
    if knowledge == "own":
        return is_mal
    if knowledge == "all":
        return jnp.ones_like(is_mal)
    raise ValueError(f"unknown attacker knowledge {knowledge!r}: choose one of {KNOWLEDGE}")


def masked_mean(updates, mask):
    w = mask.astype(updates.dtype)
    return (w @ updates) / jnp.maximum(w.sum(), 1.0)


def masked_std(updates, mask):
    """Unbiased (ddof=1) coordinate-wise std over the masked rows (torch.std's default)."""
    w = mask.astype(updates.dtype)
    mu = masked_mean(updates, mask)
    var = (w @ (updates - mu) ** 2) / jnp.maximum(w.sum() - 1.0, 1.0)
    return jnp.sqrt(var)


# ----------------------------------------------------------------------------------------------
# crafting functions: (updates [n,d], observed [n], is_mal [n], key) -> candidate rows [n, d]
# (only the rows where is_mal is True are used)
# ----------------------------------------------------------------------------------------------

def gaussian(updates, observed, is_mal, key, *, sigma: float = 1.0):
    """Each attacker sends ``N(0, sigma^2 I)`` (ByzFL's Gaussian; [our choice] sigma=1)."""
    del observed, is_mal
    return sigma * jax.random.normal(key, updates.shape, updates.dtype)


def sign_flip(updates, observed, is_mal, key):
    """``-mean(observed)`` (ByzFL's SignFlipping on the observed mean)."""
    del is_mal, key
    return jnp.broadcast_to(-masked_mean(updates, observed), updates.shape)


def ipm(updates, observed, is_mal, key, *, eps: float = 0.5):
    """Inner-product manipulation: ``-eps * mean(observed)`` (FLPoison eps=0.5)."""
    del is_mal, key
    return jnp.broadcast_to(-eps * masked_mean(updates, observed), updates.shape)


def lie_z(n, f):
    """LIE's ``z = Phi^-1((n - f - s)/(n - f))`` with ``s = floor(n/2 + 1) - f`` (Baruch et al.)."""
    n = jnp.asarray(n, jnp.float32)
    f = jnp.asarray(f, jnp.float32)
    s = jnp.floor(n / 2 + 1) - f
    p = (n - f - s) / jnp.maximum(n - f, 1.0)
    return norm.ppf(jnp.clip(p, 1e-6, 1 - 1e-6))


def lie(updates, observed, is_mal, key, *, z: float | None = None):
    """A little is enough: ``mu + z sigma`` coordinate-wise over the observed rows; ``z`` from
    :func:`lie_z` with n = all rows, f = attackers (unless given)."""
    del key
    zz = lie_z(updates.shape[0], is_mal.sum()) if z is None else z
    mal = masked_mean(updates, observed) + zz * masked_std(updates, observed)
    return jnp.broadcast_to(mal, updates.shape)


def fang_trim(updates, observed, is_mal, key):
    """Fang et al.'s trimmed-mean attack (SkyMask ``trim_attack``): ``s = sign(sum observed)``;
    where ``s_j > 0`` send ``min_j / b`` if ``min_j > 0`` else ``min_j * b``; where ``s_j <= 0``
    send ``max_j * b`` if ``max_j > 0`` else ``max_j / b``; ``b ~ U(1, 2)`` per attacker and
    coordinate; min/max over the observed rows. With ``knowledge='own'`` this full-knowledge rule
    runs over the attackers' own rows [our choice]; Fang's partial-knowledge variant instead draws
    from mu +/- [3, 4] sigma of those rows, which is not implemented."""
    del is_mal
    big = jnp.finfo(updates.dtype).max
    # leading-axis reductions as row trees / a matrix-vector product (see defenses.reduce_rows)
    mx = reduce_rows(jnp.where(observed[:, None], updates, -big), jnp.maximum)
    mn = reduce_rows(jnp.where(observed[:, None], updates, big), jnp.minimum)
    s = jnp.sign(observed.astype(updates.dtype) @ jnp.where(observed[:, None], updates, 0.0))
    b = jax.random.uniform(key, updates.shape, updates.dtype, 1.0, 2.0)
    pos = jnp.where(mn > 0, mn / b, mn * b)
    neg = jnp.where(mx > 0, mx * b, mx / b)
    return jnp.where(s > 0, pos, neg)


def fang_krum(updates, observed, is_mal, key, *, f_assumed: int | None = None, lam_min: float = 1e-5):
    """Fang et al.'s Krum attack: ``mal = -lam * sign(sum observed)`` sent by every attacker; start
    from the bound ``lam_0 = min_i sum_{l in G_i} |g_l - g_i| / ((n - 2f - 1) sqrt d)
    + max_i |g_i - g_bar| / sqrt d`` (G_i: the ``n - f - 2`` nearest observed rows; g_bar: the mean
    of the observed rows), as the spec (robust.md §3) and SkyMask's ``compute_lambda`` write it.
    Fang '20 measures the second term to the received global model (``max_i |g_i|`` in update
    space); the two agree when the observed updates have no common component, and ``lam_0`` is only
    where the halving starts. Then halve ``lam`` until Krum, run over the attackers' copies plus the
    observed rows, picks a copy, or ``lam < lam_min``. With ``knowledge='own'`` the observed rows
    are the attackers' own, which the copies replace, so Krum runs over the copies alone and
    ``lam_0`` is kept (no halving).

    Distances for each ``lam`` come from precomputed inner products, so a halving step is O(n^2).
    ``f_assumed`` is Krum's f in the simulation (default: the number of attackers, clipped to
    Krum's admissible range)."""
    del key
    n, d = updates.shape
    f = is_mal.sum()
    g = updates
    s = jnp.sign(observed.astype(g.dtype) @ jnp.where(observed[:, None], g, 0.0))
    sq = jnp.sum(g * g, axis=1)
    gram = g @ g.T
    d_bb = jnp.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0) * (1 - jnp.eye(n))
    ss = jnp.sum(s * s)
    sg = g @ s
    dist = jnp.sqrt(d_bb)
    k0 = jnp.clip(n - f - 2, 1, n - 1)
    nearest = krum_scores(dist, k0, observed)  # sums of (non-squared) distances to nearest observed
    denom = jnp.maximum(n - 2 * f - 1, 1).astype(g.dtype)
    # |g_i - g_bar|^2 = |g_i|^2 - 2 g_i.g_bar + |g_bar|^2 from the Gram matrix above (no [n, d] temporary)
    w = observed.astype(g.dtype) / jnp.maximum(observed.sum(), 1).astype(g.dtype)
    gg_bar = gram @ w
    spread = jnp.sqrt(jnp.maximum(sq - 2 * gg_bar + w @ gg_bar, 0.0))
    lam0 = jnp.min(jnp.where(observed, nearest, jnp.inf)) / (denom * jnp.sqrt(d)) + \
        jnp.max(jnp.where(observed, spread, 0.0)) / jnp.sqrt(d)
    lam0 = jnp.where(jnp.isfinite(lam0), lam0, 1.0)
    valid = observed | is_mal
    fk = jnp.clip(f if f_assumed is None else f_assumed, 0, jnp.maximum((valid.sum() - 3) // 2, 0))
    mal_i, mal_j = is_mal[:, None], is_mal[None, :]

    def krum_picks_copy(lam):
        d_mb = lam * lam * ss + 2 * lam * sg + sq          # |-lam s - g_i|^2
        dm = jnp.where(mal_i & mal_j, 0.0, jnp.where(mal_i, d_mb[None, :], jnp.where(mal_j, d_mb[:, None], d_bb)))
        dm = dm * (1 - jnp.eye(n))
        sc = krum_scores(dm, valid.sum() - fk - 2, valid)
        return is_mal[jnp.argmin(sc)]

    def cond(c):
        lam, done = c
        return (~done) & (lam >= lam_min)

    def body(c):
        lam, _ = c
        ok = krum_picks_copy(lam)
        return jnp.where(ok, lam, lam / 2), ok

    lam, _ = lax.while_loop(cond, body, (lam0, jnp.array(False)))
    return jnp.broadcast_to(-lam * s, g.shape)


def _perturbation(updates, observed, kind: str):
    mu = masked_mean(updates, observed)
    if kind == "unit":
        return mu, mu / jnp.maximum(jnp.linalg.norm(mu), 1e-30)
    if kind == "sign":
        return mu, jnp.sign(mu)
    if kind == "std":
        return mu, masked_std(updates, observed)
    raise ValueError(f"unknown perturbation {kind!r}: choose 'unit', 'sign' or 'std'")


def agr_agnostic_gamma(updates, observed, mu, p, objective: str, *, gamma_init: float = 50.0, tol: float = 1e-5):
    """Largest ``gamma`` (NDSS'21 bisection, ``lax.while_loop``) such that ``mal = mu - gamma p``
    satisfies the Min-Max constraint ``max_i |mal - g_i|^2 <= max_ij |g_i - g_j|^2`` or the Min-Sum
    constraint ``sum_i |mal - g_i|^2 <= min_i sum_j |g_i - g_j|^2`` (i, j over the observed rows).

    ``|mu - gamma p - g_i|^2 = a_i - 2 gamma b_i + gamma^2 c`` with precomputed ``a, b, c``, so each
    bisection step costs O(n). Returns ``gamma`` (0 when even tiny steps fail)."""
    g = updates
    n = g.shape[0]
    sq = jnp.sum(g * g, axis=1)
    d = jnp.maximum(sq[:, None] + sq[None, :] - 2 * (g @ g.T), 0.0) * (1 - jnp.eye(n))
    both = observed[:, None] & observed[None, :]
    diff = mu[None, :] - g
    a = jnp.sum(diff * diff, axis=1)
    b = diff @ p
    c = jnp.sum(p * p)
    if objective == "min_max":
        thr = jnp.max(jnp.where(both, d, 0.0))
    elif objective == "min_sum":
        thr = jnp.min(jnp.where(observed, jnp.sum(jnp.where(both, d, 0.0), axis=1), jnp.inf))
    else:
        raise ValueError(f"unknown objective {objective!r}: 'min_max' or 'min_sum'")

    def ok(gam):
        dist = a - 2 * gam * b + gam * gam * c
        if objective == "min_max":
            return jnp.max(jnp.where(observed, dist, -jnp.inf)) <= thr
        return jnp.sum(jnp.where(observed, dist, 0.0)) <= thr

    def cond(s):
        lam, step, succ = s
        return jnp.abs(succ - lam) > tol

    def body(s):
        lam, step, succ = s
        good = ok(lam)
        succ = jnp.where(good, lam, succ)
        lam = jnp.where(good, lam + step / 2, lam - step / 2)
        return lam, step / 2, succ

    g0 = jnp.asarray(gamma_init, g.dtype)
    _, _, succ = lax.while_loop(cond, body, (g0, g0, jnp.zeros((), g.dtype)))
    return succ


def min_max(updates, observed, is_mal, key, *, perturbation: str = "unit", gamma_init: float = 50.0, tol: float = 1e-5):
    """AGR-agnostic Min-Max (Shejwalkar & Houmansadr 2021): ``mu - gamma p`` with the largest gamma
    whose distance to every observed update is within the largest observed pairwise distance.
    ``p`` = ``mu/|mu|`` (SkyMask's choice, default), ``sign(mu)`` or ``std``."""
    del is_mal, key
    mu, p = _perturbation(updates, observed, perturbation)
    gam = agr_agnostic_gamma(updates, observed, mu, p, "min_max", gamma_init=gamma_init, tol=tol)
    return jnp.broadcast_to(mu - gam * p, updates.shape)


def min_sum(updates, observed, is_mal, key, *, perturbation: str = "unit", gamma_init: float = 50.0, tol: float = 1e-5):
    """AGR-agnostic Min-Sum: as :func:`min_max` with the sum-of-squared-distances constraint."""
    del is_mal, key
    mu, p = _perturbation(updates, observed, perturbation)
    gam = agr_agnostic_gamma(updates, observed, mu, p, "min_sum", gamma_init=gamma_init, tol=tol)
    return jnp.broadcast_to(mu - gam * p, updates.shape)


# ----------------------------------------------------------------------------------------------
# adaptive attack against FLTrust
# ----------------------------------------------------------------------------------------------

def fltrust_adaptive_objective(c, *, trust_sum, m, ref_norm, s_dot_before, alpha, beta):
    """``h(c) = s . g'``: the after-attack FLTrust aggregate ``g'`` projected on the harmful-sign
    vector ``s`` when all ``m`` attackers send ``|g_0| (c u_0 + sqrt(1 - c^2) v)`` (see
    :func:`fltrust_adaptive`); ``alpha = s . u_0``, ``beta = |s - alpha u_0|``,
    ``s_dot_before = s . g`` with ``g`` the before-attack aggregate, ``trust_sum = T`` the benign
    clients' summed trust scores. ``c`` may be an array (evaluated elementwise)."""
    c = jnp.asarray(c)
    mal = m * c * ref_norm * (c * alpha - jnp.sqrt(jnp.maximum(1.0 - c * c, 0.0)) * beta)
    return (trust_sum * s_dot_before + mal) / jnp.maximum(trust_sum + m * c, 1e-30)


def fltrust_adaptive(updates, observed, is_mal, key, *, root_update=None, direction: str = "sign",
                     grid: int = 2000):
    """Adaptive attack against FLTrust (Cao et al., NDSS'21, Sec. "adaptive attack", built on Fang
    et al.'s framework): choose the malicious updates that move FLTrust's aggregate as far as
    possible against the direction the global model would have moved without the attack, while
    keeping a positive cosine with the server's update so that ReLU does not zero their trust.

    FLTrust rescales every update to ``|g_0|`` and weights it by ``TS_i = ReLU(cos(g_i, g_0))``, so
    after the attack ``g' = (T g + |g_0| sum_mal c_i e_i) / (T + sum_mal c_i)`` with ``g`` the
    before-attack aggregate of the benign rows, ``T`` their summed trust, ``e_i`` the attackers'
    unit directions and ``c_i = cos(e_i, u_0) > 0``, ``u_0 = g_0 / |g_0|``. Fang's objective
    ``max s^T (w_before - w_after)`` with ``s = sign`` of the model's before-attack change is, in
    our pseudo-gradient convention (``w <- w - g``), ``min_e s^T g'`` with ``s = sign(g)``.

    Solution: writing ``e = c u_0 + sqrt(1 - c^2) v`` with ``v`` a unit vector orthogonal to
    ``u_0``, ``s^T g'`` is minimised over ``v`` in closed form by ``v = -s_perp / |s_perp|``,
    ``s_perp = s - (s.u_0) u_0``; what remains is the one-dimensional
    :func:`fltrust_adaptive_objective` ``h(c)``, minimised over the grid ``c in {1/grid, ..., 1}``
    (so the cosine, hence the trust score, is at least ``1/grid > 0``). Every attacker sends the
    same row ``|g_0| e`` [our choice: NDSS'21 runs gradient steps on separate unit vectors ``e_i``;
    with ``s.u_0 >= 0`` the per-attacker objective is convex in ``c_i``, so equal rows are optimal
    for a given total trust, and our 1-D search is exact up to the grid].

    Knowledge: with ``root_update`` given (``fltrust_adaptive_root``: the attacker knows the root
    set, NDSS'21's full-knowledge setting) ``g_0`` is the server's update; otherwise the attacker
    estimates it by the mean of the observed rows [our choice]. ``g`` and ``T`` come from the
    observed rows: ``T = mean_observed(TS) * (n - f)`` (exact when the observed rows are the
    benign ones). ``direction``: ``"sign"`` (``s = sign(g)``, Fang/NDSS'21) or ``"unit"``
    (``s = g / |g|``).

    Returns the candidate rows ``[n, d]`` (all equal), of norm ``|g_0|`` and cosine ``c*`` with
    ``g_0``. Degenerate case: when ``s`` is parallel to ``u_0`` (e.g. ``d = 1``) ``v = 0`` and the
    row is ``|g_0| c* u_0``."""
    del key
    if direction not in ("sign", "unit"):
        raise ValueError(f"fltrust_adaptive: unknown direction {direction!r}: choose 'sign' or 'unit'")
    if not isinstance(grid, (int,)) or isinstance(grid, bool) or grid < 2:
        raise ValueError(f"fltrust_adaptive: grid={grid!r} must be an int >= 2 (number of cosine values tried)")
    g = updates
    n, d = g.shape
    tiny = 1e-30
    if root_update is None:
        ref = masked_mean(g, observed)
    else:
        ref = jnp.asarray(root_update, g.dtype)
        if ref.shape != (d,):
            raise ValueError(f"fltrust_adaptive: root_update has shape {ref.shape}, expected ({d},) like each "
                             "update row")
    ref_norm = jnp.linalg.norm(ref)
    u0 = ref / jnp.maximum(ref_norm, tiny)
    norms = jnp.linalg.norm(g, axis=1)
    ts = jax.nn.relu((g @ u0) / jnp.maximum(norms, tiny)) * observed
    ts_sum_obs = ts.sum()
    # the before-attack FLTrust aggregate (each row rescaled to |g_0|, weighted by its trust)
    before = jnp.where(ts_sum_obs > 0, ref_norm * ((ts / jnp.maximum(norms, tiny)) @ g) / jnp.maximum(ts_sum_obs, tiny),
                       0.0)
    m = is_mal.sum().astype(g.dtype)
    trust_sum = ts_sum_obs / jnp.maximum(observed.sum(), 1).astype(g.dtype) * (n - m)
    if direction == "sign":
        s = jnp.sign(before)
    else:
        s = before / jnp.maximum(jnp.linalg.norm(before), tiny)
    alpha = s @ u0
    s_perp = s - alpha * u0
    beta = jnp.linalg.norm(s_perp)
    v = jnp.where(beta > 1e-6 * jnp.maximum(jnp.linalg.norm(s), tiny), -s_perp / jnp.maximum(beta, tiny), 0.0)
    cs = jnp.arange(1, grid + 1, dtype=g.dtype) / grid
    h = fltrust_adaptive_objective(cs, trust_sum=trust_sum, m=m, ref_norm=ref_norm, s_dot_before=s @ before,
                                   alpha=alpha, beta=beta)
    c = cs[jnp.argmin(h)]
    mal = ref_norm * (c * u0 + jnp.sqrt(jnp.maximum(1.0 - c * c, 0.0)) * v)
    return jnp.broadcast_to(mal, g.shape)


# ----------------------------------------------------------------------------------------------
# data attacks
# ----------------------------------------------------------------------------------------------

def add_trigger(x, size: int | None = None, value: float = 1.0):
    """Stamps a ``size x size`` square of ``value`` in the bottom-right corner of ``x [..., H, W, C]``.
    Default size: 5 for H >= 28 (SkyMask's 5x5), 2 for 8x8 digits [our choice]."""
    h = x.shape[-3]
    size = (5 if h >= 28 else max(1, h // 4)) if size is None else int(size)
    return x.at[..., h - size:, x.shape[-2] - size:, :].set(value)


def label_flip_data(x, y, n, key, *, num_classes: int):
    del n, key
    return x, (num_classes - 1 - y).astype(y.dtype)


def backdoor_data(x, y, n, key, *, target: int = 0, fraction: float = 0.5, trigger_size: int | None = None):
    """Poisons ``fraction`` of the valid samples: trigger stamped, label set to ``target``."""
    pick = (jax.random.uniform(key, y.shape) < fraction) & (jnp.arange(y.shape[0]) < n)
    xt = add_trigger(x, trigger_size)
    x = jnp.where(pick.reshape((-1,) + (1,) * (x.ndim - 1)), xt, x)
    return x, jnp.where(pick, target, y).astype(y.dtype)


# ----------------------------------------------------------------------------------------------
# the uniform record
# ----------------------------------------------------------------------------------------------

def _identity(updates, is_mal, key, ctx=None):
    del is_mal, key, ctx
    return updates


class Attack(NamedTuple):
    """``apply(updates [n,d], is_mal [n], key, ctx=None) -> updates [n,d]`` (malicious rows rewritten; identity
    for pure data attacks); ``poison_data(x, y, n, key) -> (x, y)`` for data attacks (None otherwise)."""
    name: str
    apply: Callable
    poison_data: Callable | None = None
    knowledge: str = "benign"


_CRAFT = {"gaussian": gaussian, "sign_flip": sign_flip, "ipm": ipm, "lie": lie, "fang_trim": fang_trim,
          "fang_krum": fang_krum, "min_max": min_max, "min_sum": min_sum, "fltrust_adaptive": fltrust_adaptive,
          "fltrust_adaptive_root": fltrust_adaptive}
# attacks that also read the server's root-set update from ``ctx`` (a labelled knowledge level)
_SERVER_KNOWLEDGE = ("fltrust_adaptive_root",)
_ROOT_AWARE = ("fltrust_adaptive",)
ATTACKS = ("none",) + tuple(_CRAFT) + ("label_flip", "backdoor")


def model_attack(craft: Callable, knowledge: str = "benign", server_knowledge: bool = False, **hparams) -> Callable:
    """Wraps a crafting function into ``apply(updates, is_mal, key, ctx=None) -> updates``.

    ``server_knowledge=True`` passes ``root_update=ctx['root_update']`` to ``craft`` when the
    server computed one this round (rules with a root set: FLTrust, SkyMask); against other rules
    the craft gets no root update and falls back to its own estimate [our choice]."""
    observed_mask(jnp.zeros(1, bool), knowledge)  # validates the name early

    def apply(updates, is_mal, key, ctx=None):
        g, _, finite = check_updates(updates, None, "attack")
        if is_mal.shape != (g.shape[0],):
            raise ValueError(f"attack: is_mal has shape {is_mal.shape}, expected ({g.shape[0]},)")
        obs = observed_mask(is_mal, knowledge) & finite
        extra = {}
        if server_knowledge and ctx is not None and ctx.get("root_update") is not None:
            extra["root_update"] = ctx["root_update"]
        cand = craft(g, obs, is_mal, key, **hparams, **extra)
        return jnp.where(is_mal[:, None], cand, g)

    return apply


def make_attack(name: str, *, knowledge: str = "benign", num_classes: int = 10, **hparams) -> Attack:
    """The :class:`Attack` for ``name`` in :data:`ATTACKS`; ``hparams`` go to the crafting function.

    ``server_knowledge`` (only for ``fltrust_adaptive``; ``fltrust_adaptive_root`` sets it): the
    attack also reads ``ctx['root_update']``, the server's root-set update, when the rule computes
    one (FLTrust, SkyMask); against rules without a root set it uses its own estimate."""
    if name == "none":
        return Attack(name, _identity, None, knowledge)
    if name in _CRAFT:
        server = bool(hparams.pop("server_knowledge", name in _SERVER_KNOWLEDGE))
        if server and _CRAFT[name].__name__ not in _ROOT_AWARE:
            raise ValueError(f"attack {name!r} cannot use the server's root update: server_knowledge is only for "
                             f"{_ROOT_AWARE}")
        if name in _SERVER_KNOWLEDGE and not server:
            raise ValueError(f"attack {name!r} is the server-knowledge variant; use {name.removesuffix('_root')!r} "
                             "for an attacker that does not see the root update")
        return Attack(name, model_attack(_CRAFT[name], knowledge, server, **hparams), None, knowledge)
    if name == "label_flip":
        return Attack(name, _identity,
                      lambda x, y, n, k: label_flip_data(x, y, n, k, num_classes=num_classes), knowledge)
    if name == "backdoor":
        target = hparams.get("target", 0)
        tsize = hparams.get("trigger_size")

        def scale(updates, is_mal, key, ctx=None):
            del key, ctx
            n, f = updates.shape[0], jnp.maximum(is_mal.sum(), 1)
            return jnp.where(is_mal[:, None], updates * (n / f), updates)

        return Attack(name, scale, lambda x, y, n, k: backdoor_data(x, y, n, k, target=target, trigger_size=tsize),
                      knowledge)
    raise ValueError(f"unknown attack {name!r}: choose one of {ATTACKS}")
