"""CGI-DM (Revelio, arXiv 2403.11162): detect unauthorised fine-tuning data by contrastive recovery.

An image ``x`` is partly removed (a mask keeps a known region), then the removed region is recovered
by PGD on the *contrastive* diffusion loss between the fine-tuned model ``theta'`` and the
pretrained model ``theta``::

    L(z) = ||eps_theta'(q(z, t, e1), t) - e1||^2 - ||eps_theta(q(z, t, e2), t) - e2||^2,
    z    = x * m + (x_init + delta) * (1 - m),      minimise L over ||delta||_2 <= radius

(one ``t ~ U{1..T-1}`` per PGD step, a Monte-Carlo estimate of the KL between the two models'
reverse processes). Images the fine-tuned model was trained on are recovered closer to the original,
so the similarity between ``x`` and its recovery is the membership score.

All images are NHWC float in ``[-1, 1]``; masks are ``[H, W]`` float32 with 1 = known (kept) and
0 = removed, broadcast over channels. An *objective* is a pure function
``objective(params, x [B,H,W,C], cond, key) -> [B]`` (per-example loss to minimise); build the
paper's with :func:`contrastive_objective` and the "fine-tuned model only" ablation with
:func:`finetuned_objective`. Build each objective once and reuse it: it is a static argument of the
jitted PGD, so a new object recompiles.

Pipeline::

    mask = checkerboard_mask((8, 8), cell=2)                       # keeps exactly 50 %
    obj = contrastive_objective(eps_fn, schedule, noise="shared")
    x_rec = recover(obj, {"ft": p_ft, "pre": p_pre}, x, mask, key, pgd_config(mask))
    s = neg_l2_removed(x, x_rec, mask)                            # higher = more likely a member
    roc_auc(s[members], s[holdouts])
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.diffusion import ddpm

__all__ = ["checkerboard_mask", "random_block_mask", "fill_removed", "contrastive_loss",
           "contrastive_objective", "finetuned_objective", "PGDConfig", "pgd_config", "pgd", "recover",
           "random_perturbation", "neg_l2_removed", "ssim_map", "ssim_removed", "cosine_similarity",
           "split_max_cosine", "loss_scores", "contrastive_scores", "roc_auc", "roc_curve", "tpr_at_fpr",
           "best_threshold", "threshold_at_fpr", "accuracy_at"]

Objective = Callable[[Any, jax.Array, Any, jax.Array], jax.Array]


# ----------------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------------
def checkerboard_mask(shape: tuple[int, int], cell: int) -> np.ndarray:
    """Checkerboard of ``cell x cell`` squares, ``[H, W]`` float32, 1 = known.

    Revelio keeps the top-left and bottom-right cells of every 2x2 group of cells (exactly 50 % of
    the latent); this is the same pattern. Exactly 50 % needs an even number of cells along at least
    one axis, so ``H`` and ``W`` must be multiples of ``cell`` and ``H/cell * W/cell`` even.
    """
    h, w = (int(s) for s in shape)
    if cell < 1 or h % cell or w % cell:
        raise ValueError(f"cell={cell} must be >= 1 and divide the image shape {shape}")
    if ((h // cell) * (w // cell)) % 2:
        raise ValueError(f"shape {shape} with cell={cell} has an odd number of cells: the checkerboard "
                         "cannot keep exactly 50 %; use a cell size that gives an even count")
    i = np.arange(h)[:, None] // cell
    j = np.arange(w)[None, :] // cell
    return ((i + j) % 2 == 0).astype(np.float32)


def random_block_mask(shape: tuple[int, int], block: int, keep_fraction: float, seed: int) -> np.ndarray:
    """Random blocks: the image is tiled into ``block x block`` squares and exactly
    ``keep_fraction * n_blocks`` of them (chosen uniformly without replacement) are kept.

    ``keep_fraction * n_blocks`` must be an integer so that the kept fraction is exact.
    """
    h, w = (int(s) for s in shape)
    if block < 1 or h % block or w % block:
        raise ValueError(f"block={block} must be >= 1 and divide the image shape {shape}")
    nb = (h // block) * (w // block)
    n_keep = keep_fraction * nb
    if not 0.0 < keep_fraction < 1.0 or abs(n_keep - round(n_keep)) > 1e-9:
        raise ValueError(f"keep_fraction={keep_fraction} must lie in (0, 1) and be a multiple of 1/{nb} "
                         f"(the number of {block}x{block} blocks) so that the kept fraction is exact")
    keep = np.zeros(nb, np.float32)
    keep[np.random.default_rng(seed).permutation(nb)[:int(round(n_keep))]] = 1.0
    return np.kron(keep.reshape(h // block, w // block), np.ones((block, block), np.float32))


def _mask4(mask, x):
    mask = jnp.asarray(mask, x.dtype)
    if mask.ndim == 2:
        return mask[None, :, :, None]
    if mask.ndim == 3:  # one mask per example
        return mask[:, :, :, None]
    return mask


def fill_removed(x: jax.Array, mask: jax.Array, mode: str = "zero", iters: int = 8) -> jax.Array:
    """Initial guess of the removed region (Revelio decodes/re-encodes the masked latent instead).

    ``zero``: removed pixels set to 0 (mid-grey in [-1, 1]) [our choice for the default];
    ``blur``: ``iters`` Jacobi sweeps of a 3x3 mean that diffuse the known pixels into the holes.
    """
    m = _mask4(mask, x)
    base = x * m
    if mode == "zero":
        return base
    if mode != "blur":
        raise ValueError(f"fill mode {mode!r}: use 'zero' or 'blur'")
    k = jnp.ones((3, 3, 1, 1), x.dtype) / 9.0

    def conv(u):
        c = u.shape[-1]
        return jax.lax.conv_general_dilated(jnp.pad(u, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge"),
                                            jnp.tile(k, (1, 1, 1, c)), (1, 1), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)

    u = base
    for _ in range(iters):
        u = base + (1 - m) * conv(u)
    return u


# ----------------------------------------------------------------------------------------------
# objectives
# ----------------------------------------------------------------------------------------------
def _mse(a, b):
    return jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim)))


def contrastive_loss(eps_fn: Callable, params_ft: Any, params_pre: Any, schedule: ddpm.Schedule, x: jax.Array,
                     t: jax.Array, noise_ft: jax.Array, noise_pre: jax.Array, cond: Any = None) -> jax.Array:
    """``[B]``: ``MSE(eps_ft(q(x,t,n1)), n1) - MSE(eps_pre(q(x,t,n2)), n2)`` (mean over pixels).

    ``t``: ``[B]`` int; pass ``noise_pre is noise_ft`` for the shared-noise estimator.
    """
    l_ft = _mse(eps_fn(params_ft, ddpm.q_sample(schedule, x, t, noise_ft), t, cond), noise_ft)
    l_pre = _mse(eps_fn(params_pre, ddpm.q_sample(schedule, x, t, noise_pre), t, cond), noise_pre)
    return l_ft - l_pre


def _t_range(schedule, t_min, t_max):
    """``(t_min, t_max)`` with ``t ~ U{t_min..t_max-1}``; ``t_max=None`` is ``T`` (Revelio's 1..999).

    Why a smaller ``t_max`` can matter [our choice]: PGD steps along the *normalised* gradient, so a draw
    at a ``t`` where ``x_t`` is almost pure noise (on 8x8 pixels with the linear schedule, ``abar_t``
    < 0.08 beyond t=500) moves ``delta`` as far as an informative draw, in a direction that is noise.
    """
    T = schedule.num_timesteps
    t_max = T if t_max is None else int(t_max)
    if not 0 <= t_min < t_max <= T:
        raise ValueError(f"t range [{t_min}, {t_max}) must satisfy 0 <= t_min < t_max <= T={T}")
    return int(t_min), t_max


def _tile(x, cond, k):
    """Repeats the batch ``k`` times (``k`` Monte-Carlo draws per example in one model call)."""
    xk = jnp.concatenate([x] * k, 0) if k > 1 else x
    ck = jax.tree_util.tree_map(lambda c: jnp.concatenate([c] * k, 0), cond) if k > 1 else cond
    return xk, ck


def contrastive_objective(eps_fn: Callable, schedule: ddpm.Schedule, noise: str = "shared",
                          t_min: int = 1, mc_samples: int = 1, t_max: int | None = None,
                          pre_weight: float = 1.0) -> Objective:
    """The CGI-DM objective ``objective({"ft": p', "pre": p}, x, cond, key) -> [B]``.

    ``pre_weight`` ``w`` scales the pretrained term, ``L_ft - w * L_pre``; ``w = 1`` is the paper's
    contrast. ``w < 1`` is [our choice], an option, not the paper's method: with ``w = 1`` PGD in 8x8
    pixel space lowers the objective mostly by *raising* ``L_pre`` (moving the fill off the digit
    manifold, where the pretrained model fails faster than the fine-tuned one) rather than by matching
    what the fine-tuned model memorised; ``w < 1`` keeps a reward for ``L_ft`` being low. ``w = 0`` is
    the fine-tuned-only objective (with this objective's noise draws).

    ``t ~ U{t_min..t_max-1}`` per example per draw (Revelio: one draw per PGD step, ``t`` in 1..999;
    ``t_max=None`` means ``T``, the authors' range; a smaller ``t_max`` is [our choice], see
    :func:`_t_range`);
    ``mc_samples`` > 1 averages that many (t, noise) draws per call [our choice, variance reduction].
    ``noise='shared'`` uses one ``eps`` for both models [our choice, a variance reduction: the
    difference of two correlated losses]; ``noise='independent'`` draws two, as the authors' code does.
    """
    if noise not in ("shared", "independent"):
        raise ValueError(f"noise={noise!r}: use 'shared' (variance-reduced) or 'independent' (authors' code)")
    if mc_samples < 1:
        raise ValueError(f"mc_samples={mc_samples} must be >= 1")
    if not 0.0 <= float(pre_weight) <= 1.0:
        raise ValueError(f"pre_weight={pre_weight} must lie in [0, 1] (1 = the paper's contrast)")
    pre_weight = float(pre_weight)
    t_min, T = _t_range(schedule, t_min, t_max)

    def objective(params, x, cond, key):
        kt, k1, k2 = jax.random.split(key, 3)
        xk, ck = _tile(x, cond, mc_samples)
        t = jax.random.randint(kt, (xk.shape[0],), t_min, T)
        n1 = jax.random.normal(k1, xk.shape, x.dtype)
        n2 = n1 if noise == "shared" else jax.random.normal(k2, xk.shape, x.dtype)
        if pre_weight == 1.0:
            v = contrastive_loss(eps_fn, params["ft"], params["pre"], schedule, xk, t, n1, n2, ck)
        else:
            l_ft = _mse(eps_fn(params["ft"], ddpm.q_sample(schedule, xk, t, n1), t, ck), n1)
            l_pre = _mse(eps_fn(params["pre"], ddpm.q_sample(schedule, xk, t, n2), t, ck), n2)
            v = l_ft - pre_weight * l_pre
        return v.reshape(mc_samples, x.shape[0]).mean(0)

    return objective


def finetuned_objective(eps_fn: Callable, schedule: ddpm.Schedule, t_min: int = 1, mc_samples: int = 1,
                        t_max: int | None = None) -> Objective:
    """Ablation: inversion with the fine-tuned model alone, ``MSE(eps_ft(q(x,t,n)), n)`` (uses ``params["ft"]``);
    same ``t`` range and draws as :func:`contrastive_objective`."""
    if mc_samples < 1:
        raise ValueError(f"mc_samples={mc_samples} must be >= 1")
    t_min, T = _t_range(schedule, t_min, t_max)

    def objective(params, x, cond, key):
        kt, k1 = jax.random.split(key)
        xk, ck = _tile(x, cond, mc_samples)
        t = jax.random.randint(kt, (xk.shape[0],), t_min, T)
        n = jax.random.normal(k1, xk.shape, x.dtype)
        v = _mse(eps_fn(params["ft"], ddpm.q_sample(schedule, xk, t, n), t, ck), n)
        return v.reshape(mc_samples, x.shape[0]).mean(0)

    return objective


# ----------------------------------------------------------------------------------------------
# PGD
# ----------------------------------------------------------------------------------------------
class PGDConfig(NamedTuple):
    """L2 PGD (advertorch-style, targeted = minimise). ``radius``: L2 norm bound of ``delta`` per example
    over the removed entries; ``step_size``: length of each step along the L2-normalised gradient."""

    radius: float
    step_size: float
    steps: int
    clip_min: float = -1.0
    clip_max: float = 1.0


def pgd_config(mask: np.ndarray, channels: int = 1, steps: int = 300, rms: float = 0.77,
               steps_per_radius: float = 35.0, clip: tuple[float, float] = (-1.0, 1.0)) -> PGDConfig:
    """Revelio's radius scaled to the number of removed entries.

    Revelio: radius 70 over a 4x64x64 latent whose half (8,192 entries) is removed, i.e. an RMS of
    ``70/sqrt(8192) ~ 0.77`` per removed entry, step 2.0 = radius/35, 1000 steps, clip [-100, 100].
    Here ``radius = rms * sqrt(n_removed)`` and ``step = radius / steps_per_radius``; ``steps`` is scaled
    down for CPU [our choice], and clipping is the pixel range [-1, 1] instead of [-100, 100] (pixel space).
    """
    n_removed = float((1.0 - np.asarray(mask)).sum()) * channels
    radius = rms * math.sqrt(n_removed)
    return PGDConfig(radius=radius, step_size=radius / steps_per_radius, steps=int(steps),
                     clip_min=float(clip[0]), clip_max=float(clip[1]))


def _per_example_norm(v):
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)), keepdims=True))


def _project(delta, x_init, unknown, radius, clip_min, clip_max):
    """Onto the L2 ball, then into the clip box (clipping moves each entry toward ``x_init``, which lies
    inside the box, so it can only shorten ``delta``: the result stays in the ball)."""
    n = _per_example_norm(delta)
    delta = delta * jnp.minimum(1.0, radius / jnp.maximum(n, 1e-12))
    return (jnp.clip(x_init + delta, clip_min, clip_max) - x_init) * unknown


@functools.partial(jax.jit, static_argnames=("objective", "steps"))
def _pgd(objective, params, x0, unknown, x_init, cond, key, radius, step_size, clip_min, clip_max, steps):
    known = 1.0 - unknown

    def compose(delta):
        return x0 * known + (x_init + delta) * unknown

    def body(delta, k):
        g = jax.grad(lambda d: jnp.sum(objective(params, compose(d), cond, k)))(delta)
        g = jnp.where(jnp.isfinite(g), g, 0.0) * unknown  # Revelio zeroes NaN gradients
        delta = delta - step_size * g / jnp.maximum(_per_example_norm(g), 1e-12)
        return _project(delta, x_init, unknown, radius, clip_min, clip_max), None

    delta0 = jnp.zeros_like(x0)
    delta, _ = jax.lax.scan(body, delta0, jax.random.split(key, steps))
    return compose(delta), delta


def pgd(objective: Objective, params: Any, x0: jax.Array, mask: Any, x_init: jax.Array, key: jax.Array,
        config: PGDConfig, cond: Any = None) -> tuple[jax.Array, jax.Array]:
    """Minimises ``objective`` over the removed region; returns ``(x_adv, delta)``, both ``[B,H,W,C]``.

    ``x_adv = x0 * m + clip(x_init + delta) * (1 - m)``: the known region is exactly ``x0``; ``delta``
    is zero on the known region and ``||delta_b||_2 <= radius`` for every example. No random start
    (as Revelio). ``x_init`` must lie inside ``[clip_min, clip_max]``.
    """
    x0 = jnp.asarray(x0)
    if x0.ndim != 4:
        raise ValueError(f"x0 shape {x0.shape}: expected NHWC [B, H, W, C]")
    if config.steps < 1 or config.radius < 0 or config.step_size <= 0:
        raise ValueError(f"PGD config {config}: need steps >= 1, radius >= 0, step_size > 0")
    unknown = jnp.broadcast_to(1.0 - _mask4(mask, x0), x0.shape)
    x_init = jnp.clip(jnp.asarray(x_init, x0.dtype), config.clip_min, config.clip_max)
    return _pgd(objective, params, x0, unknown, x_init, cond, key, jnp.asarray(config.radius, x0.dtype),
                jnp.asarray(config.step_size, x0.dtype), config.clip_min, config.clip_max, int(config.steps))


def recover(objective: Objective, params: Any, x: jax.Array, mask: Any, key: jax.Array, config: PGDConfig,
            cond: Any = None, fill: str = "zero", vae: tuple[Callable, Callable] | None = None) -> jax.Array:
    """Remove the ``mask==0`` region of ``x`` and recover it by PGD; returns the recovered image ``[B,H,W,C]``.

    Pixel space (``vae=None``): ``x_init = fill_removed(x, mask, fill)``, PGD on pixels.
    Latent space (``vae=(encode, decode)``, the paper's setting): ``mask`` is over the *latent* grid;
    ``z0 = encode(x)``, the masked latent is decoded and re-encoded as the PGD start (as Revelio), the
    objective sees latents, and the output is ``decode(z0 * m + z_adv * (1 - m))``.
    """
    x = jnp.asarray(x)
    if vae is None:
        x_adv, _ = pgd(objective, params, x, mask, fill_removed(x, mask, fill), key, config, cond)
        return x_adv
    encode, decode = vae
    z0 = encode(x)
    z_init = encode(decode(fill_removed(z0, mask, fill)))
    z_adv, _ = pgd(objective, params, z0, mask, z_init, key, config, cond)
    return decode(z_adv)


def random_perturbation(x: jax.Array, mask: Any, key: jax.Array, config: PGDConfig, fill: str = "zero") -> jax.Array:
    """Control: a random ``delta`` of norm ``radius`` on the removed region (no model involved)."""
    x = jnp.asarray(x)
    unknown = jnp.broadcast_to(1.0 - _mask4(mask, x), x.shape)
    x_init = jnp.clip(fill_removed(x, mask, fill), config.clip_min, config.clip_max)
    d = jax.random.normal(key, x.shape) * unknown
    d = d * config.radius / jnp.maximum(_per_example_norm(d), 1e-12)
    d = _project(d, x_init, unknown, config.radius, config.clip_min, config.clip_max)
    return x * (1 - unknown) + (x_init + d) * unknown


# ----------------------------------------------------------------------------------------------
# similarity scores (higher = more similar = more likely a member)
# ----------------------------------------------------------------------------------------------
def neg_l2_removed(x: np.ndarray, y: np.ndarray, mask: Any) -> np.ndarray:
    """``[B]``: ``-||(x - y) * (1 - m)||_2`` (float64)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    u = 1.0 - np.asarray(_mask4(mask, jnp.asarray(x, jnp.float32)), np.float64)
    return -np.sqrt((((x - y) * u) ** 2).sum(axis=(1, 2, 3)))


def ssim_map(x: np.ndarray, y: np.ndarray, window: int = 3, data_range: float = 2.0) -> np.ndarray:
    """Local SSIM (Wang et al. 2004) with a ``window x window`` uniform window, reflect padding,
    ``K1=0.01, K2=0.03``; ``[B,H,W,C] -> [B,H,W,C]`` float64. [our choice] uniform 3x3 window: a
    Gaussian 11x11 window is larger than an 8x8 digit."""
    from scipy.ndimage import uniform_filter

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    f = lambda a: uniform_filter(a, size=(1, window, window, 1), mode="reflect")
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim_removed(x: np.ndarray, y: np.ndarray, mask: Any, window: int = 3, data_range: float = 2.0) -> np.ndarray:
    """``[B]``: mean of :func:`ssim_map` over the removed pixels."""
    s = ssim_map(x, y, window, data_range)
    u = np.broadcast_to(1.0 - np.asarray(_mask4(mask, jnp.asarray(x, jnp.float32)), np.float64), s.shape)
    return (s * u).sum(axis=(1, 2, 3)) / u.sum(axis=(1, 2, 3))


def cosine_similarity(fa: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """Row-wise cosine ``[B]`` of features ``[B, D]``."""
    fa, fb = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
    return (fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1) + 1e-12)


def split_max_cosine(f_orig: np.ndarray, f_rec: np.ndarray) -> np.ndarray:
    """Revelio's score: for each original, the max cosine over *all* recoveries in its split ``[B]``."""
    a = np.asarray(f_orig, np.float64)
    b = np.asarray(f_rec, np.float64)
    a = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)
    b = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-12)
    return (a @ b.T).max(1)


# ----------------------------------------------------------------------------------------------
# baselines without inversion
# ----------------------------------------------------------------------------------------------
def _t_grid(schedule, t_grid):
    if t_grid is None:
        T = schedule.num_timesteps
        t_grid = list(range(1, T, max(T // 10, 1)))  # {1, 101, ..., 901} for T=1000, as Revelio prints
    return jnp.asarray(t_grid, jnp.int32)


@functools.partial(jax.jit, static_argnames=("eps_fn", "n_noise", "contrast"))
def _grid_loss(eps_fn, params_ft, params_pre, schedule, x, cond, key, ts, n_noise, contrast):
    def one(carry, inp):
        t, k = inp
        tb = jnp.full((x.shape[0],), t, jnp.int32)
        n = jax.random.normal(k, x.shape, x.dtype)
        if contrast:
            v = contrastive_loss(eps_fn, params_ft, params_pre, schedule, x, tb, n, n, cond)
        else:
            v = _mse(eps_fn(params_ft, ddpm.q_sample(schedule, x, tb, n), tb, cond), n)
        return carry + v, None

    tt = jnp.repeat(ts, n_noise)
    keys = jax.random.split(key, tt.shape[0])
    tot, _ = jax.lax.scan(one, jnp.zeros((x.shape[0],), x.dtype), (tt, keys))
    return tot / tt.shape[0]


def loss_scores(eps_fn: Callable, params_ft: Any, schedule: ddpm.Schedule, x: jax.Array, key: jax.Array,
                cond: Any = None, t_grid=None, n_noise: int = 4) -> np.ndarray:
    """Loss-based MIA baseline: ``-mean_{t in grid, noise} L_ft(x, t)`` ``[B]`` (higher = member)."""
    return -np.asarray(_grid_loss(eps_fn, params_ft, params_ft, schedule, jnp.asarray(x), cond, key,
                                  _t_grid(schedule, t_grid), n_noise, False))


def contrastive_scores(eps_fn: Callable, params_ft: Any, params_pre: Any, schedule: ddpm.Schedule, x: jax.Array,
                       key: jax.Array, cond: Any = None, t_grid=None, n_noise: int = 4) -> np.ndarray:
    """Contrastive loss without inversion: ``-mean (L_ft - L_pre)(x)`` with shared noise ``[B]``."""
    return -np.asarray(_grid_loss(eps_fn, params_ft, params_pre, schedule, jnp.asarray(x), cond, key,
                                  _t_grid(schedule, t_grid), n_noise, True))


# ----------------------------------------------------------------------------------------------
# detection metrics (members are the positive class; higher score = member)
# ----------------------------------------------------------------------------------------------
def _check_scores(pos, neg):
    pos, neg = np.asarray(pos, np.float64).ravel(), np.asarray(neg, np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"need at least one member and one hold-out score (got {len(pos)}, {len(neg)})")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise ValueError("scores contain NaN/inf: check the recovery")
    return pos, neg


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC = P(member score > hold-out score) + 0.5 P(tie)."""
    pos, neg = _check_scores(pos, neg)
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def roc_curve(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` for the rule ``score >= threshold``; thresholds descending, from +inf."""
    pos, neg = _check_scores(pos, neg)
    th = np.concatenate([[np.inf], np.unique(np.concatenate([pos, neg]))[::-1]])
    tpr = np.array([(pos >= t).mean() for t in th])
    fpr = np.array([(neg >= t).mean() for t in th])
    return fpr, tpr, th


def tpr_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.01) -> float:
    """Largest TPR over thresholds whose empirical FPR <= ``fpr`` (with fewer than ``1/fpr`` hold-outs
    this means zero false positives)."""
    f, t, _ = roc_curve(pos, neg)
    return float(t[f <= fpr + 1e-12].max())


def best_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """Threshold maximising balanced accuracy ``(TPR + TNR)/2`` of ``score >= threshold``; the midpoint
    between adjacent distinct scores."""
    pos, neg = _check_scores(pos, neg)
    s = np.unique(np.concatenate([pos, neg]))
    cands = np.concatenate([[s[0] - 1.0], (s[1:] + s[:-1]) / 2, [s[-1] + 1.0]])
    acc = [0.5 * ((pos >= c).mean() + (neg < c).mean()) for c in cands]
    return float(cands[int(np.argmax(acc))])


def threshold_at_fpr(neg: np.ndarray, fpr: float = 0.01) -> float:
    """Smallest threshold whose FPR on ``neg`` is <= ``fpr`` (a quantile of the hold-out scores)."""
    neg = np.sort(np.asarray(neg, np.float64).ravel())[::-1]
    k = int(math.floor(fpr * len(neg)))  # allowed false positives
    if k >= len(neg):
        return float(neg[-1])
    return float(np.nextafter(neg[k], np.inf))


def accuracy_at(pos: np.ndarray, neg: np.ndarray, threshold: float) -> dict:
    """``{"accuracy" (balanced), "tpr", "fpr"}`` of the rule ``score >= threshold``."""
    pos, neg = _check_scores(pos, neg)
    tpr, fpr = float((pos >= threshold).mean()), float((neg >= threshold).mean())
    return {"accuracy": 0.5 * (tpr + 1 - fpr), "tpr": tpr, "fpr": fpr}
