"""One Gaussian process per layer kind: ARD Matérn-5/2 (L2 distance) over log features, log targets.

Model [paper: Matérn nu = 2.5; the rest is our choice, following systems.md's proposals]::

    x = (log(features) - mu_x) / sd_x                       # standardised log features, [D]
    z = (log(max(cost, floor)) - mu_y) / sd_y               # standardised log cost
    z ~ GP(b + w.x,  a^2 * Matern52_L2(x / l, x' / l)) + N(0, s^2)

* Kernel: tinygp's ``Matern52`` uses the **L1** distance by default; THOR's kernel is the
  standard (Euclidean) Matérn-5/2, so we pass ``distance=L2Distance()`` explicitly. ARD through
  ``transforms.Linear(1 / l, ...)`` with one length scale per feature.
* Mean: a linear function of chosen log features [our choice; THOR uses log FLOPs and log bytes].
  Costs are close to power laws in the layer sizes, i.e. linear in log space, so the linear mean
  extrapolates to bigger layers and the GP models the residual (cache, vectorisation, launch
  effects). A small ridge penalty on ``w`` keeps it stable with few points.
* Hyperparameters (log a, log l [D], log s, b, w) maximise the log marginal likelihood with
  optax Adam through JAX gradients (one jitted ``lax.scan``).
* Noise: a homoscedastic term plus, when ``context`` is given, a heteroscedastic term for the
  subtraction (see :func:`fit_gp`).
* Floor: subtraction of noisy measurements can give a non-positive layer cost (a layer XLA
  fused away, or noise); it is floored at ``floor_frac`` x the median positive cost of that kind
  before the log [our choice].
* Padding: training sets are padded to a power of two (>= 16) with points of variance 1e6 that
  carry no information, so active learning re-uses a handful of compiled fits. The GP algebra
  runs in float64 inside a local ``jax.enable_x64`` context (float32 Cholesky fails with the
  padding variance).

Predictions are in natural-log cost space: ``mean_log, var_log`` (latent, without the noise).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["LayerGP", "fit_gp", "predict_gp", "gp_kernel", "PAD_VARIANCE", "D_MAX"]

PAD_VARIANCE = 1e6
D_MAX = 10  # features are zero-padded to this many columns (the most of any layer kind)


class LayerGP(NamedTuple):
    """A fitted GP for one layer kind. Arrays are numpy; ``params`` a dict of numpy arrays."""

    kind: str
    X: np.ndarray  # [n_pad, D_MAX] standardised log features (zero-padded columns)
    z: np.ndarray  # [n_pad] standardised log targets
    diag: np.ndarray  # [n_pad] 0 for real points, PAD_VARIANCE for padding
    x_mu: np.ndarray
    x_sd: np.ndarray
    y_mu: float
    y_sd: float
    floor: float
    params: dict
    n: int  # real training points


def gp_kernel(params):
    """ARD Matérn-5/2 with the Euclidean (L2) distance, amplitude a^2."""
    import jax.numpy as jnp
    from tinygp import kernels, transforms
    from tinygp.kernels.distance import L2Distance

    base = kernels.Matern52(scale=1.0, distance=L2Distance())
    return jnp.exp(2.0 * params["log_amp"]) * transforms.Linear(jnp.exp(-params["log_ls"]), base)


def _gp(params, X, diag):
    import jax.numpy as jnp
    from tinygp import GaussianProcess

    def mean(x):
        return params["b"] + jnp.dot(x, params["w"] * params["mean_mask"])

    noise = jnp.exp(2.0 * params["log_noise"]) + jnp.exp(2.0 * params["log_rel"]) * params["rsq"] + 1e-6
    return GaussianProcess(gp_kernel(params), X, diag=diag + noise, mean=mean)


_FIT_CACHE: dict = {}


def _x64():
    """float64 for the GP algebra, locally (the padding variance 1e6 needs it; x64 stays off globally)."""
    import jax

    return jax.enable_x64(True)


def _fit_fn(steps: int, lr: float, ridge: float):
    key = (steps, lr, ridge)
    if key in _FIT_CACHE:
        return _FIT_CACHE[key]
    import jax
    import jax.numpy as jnp
    import optax

    opt = optax.adam(lr)

    def nll(params, X, z, diag, n):
        lp = _gp(params, X, diag).log_probability(z)
        return -lp / n + ridge * jnp.sum((params["w"] * params["mean_mask"]) ** 2)

    @jax.jit
    def fit(params, X, z, diag, n):
        def body(carry, _):
            p, s = carry
            loss, g = jax.value_and_grad(nll)(p, X, z, diag, n)
            upd, s = opt.update(g, s, p)
            p = optax.apply_updates(p, upd)
            # keep the noise and length scales in a sane range (standardised inputs/targets)
            p = dict(p, mean_mask=params["mean_mask"], rsq=params["rsq"], log_noise=jnp.clip(p["log_noise"], jnp.log(1e-3), jnp.log(1.0)),
                     log_ls=jnp.clip(p["log_ls"], jnp.log(0.05), jnp.log(100.0)),
                     log_rel=jnp.clip(p["log_rel"], jnp.log(1e-4), jnp.log(1.0)))
            return (p, s), loss

        (p, _), losses = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
        return p, losses

    _FIT_CACHE[key] = fit
    return fit


def _pad_size(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def fit_gp(kind: str, features: np.ndarray, costs: np.ndarray, *, context: np.ndarray | None = None,
           mean_cols: Sequence[int] | None = None, steps: int = 300, lr: float = 0.05, ridge: float = 1e-2,
           floor_frac: float = 0.05) -> LayerGP:
    """Fits one GP. features: [n, D] positive raw features (D <= 10); costs: [n] (joules or seconds).

    context: [n] the size of the measurements each cost was subtracted from (THOR: c_{i-1} + c_i).
    When given, point i gets extra noise variance ``r^2 * (context_i / cost_i)^2`` in log space
    with a learnt relative measurement noise ``r`` [our choice: heteroscedastic subtraction
    noise]: a small layer subtracted from two big variants is mostly noise and is down-weighted.
    mean_cols: feature columns the linear mean uses (default: all). THOR passes the FLOPs and
    bytes columns: a mean over all (collinear) features extrapolates wildly with few points.
    """
    import jax.numpy as jnp

    F = np.asarray(features, dtype=np.float64)
    c = np.asarray(costs, dtype=np.float64)
    if F.ndim != 2 or c.shape != (F.shape[0],):
        raise ValueError(f"features {F.shape} must be [n, D] and costs {c.shape} must be [n]")
    if F.shape[1] > D_MAX:
        raise ValueError(f"kind {kind!r}: {F.shape[1]} features; at most {D_MAX} are supported")
    if F.shape[0] < 2:
        raise ValueError(f"kind {kind!r}: {F.shape[0]} sample(s); a GP needs >= 2 (profile more chains with this layer kind)")
    if np.any(F <= 0) or not np.all(np.isfinite(F)):
        raise ValueError(f"kind {kind!r}: features must be finite and > 0 (they are log-scaled)")
    if not np.all(np.isfinite(c)):
        raise ValueError(f"kind {kind!r}: costs contain NaN/inf")
    pos = c[c > 0]
    floor = float(floor_frac * np.median(pos)) if pos.size else 1e-12
    y = np.log(np.maximum(c, floor))
    L = np.log(F)
    x_mu, x_sd = L.mean(0), L.std(0)
    x_sd = np.where(x_sd > 1e-9, x_sd, 1.0)
    y_mu, y_sd = float(y.mean()), float(y.std()) if y.std() > 1e-9 else 1.0
    X = (L - x_mu) / x_sd
    z = (y - y_mu) / y_sd
    n, d = X.shape
    cols = list(range(d)) if mean_cols is None else [int(i) for i in mean_cols]
    mask = np.zeros(D_MAX)
    mask[cols] = 1.0
    # initial linear mean by ridge least squares on the mean columns: a good start for Adam
    A = np.concatenate([np.ones((n, 1)), X[:, cols]], 1)
    coef = np.linalg.solve(A.T @ A + 1e-1 * np.eye(len(cols) + 1), A.T @ z)
    w0 = np.zeros(D_MAX)
    w0[cols] = coef[1:]
    # pad points to a power of two and features to D_MAX zero columns (no effect on the kernel or
    # the mean), so every kind and most active-learning rounds share one compiled fit
    m = _pad_size(n)
    Xp = np.zeros((m, D_MAX)); Xp[:n, :d] = X
    zp = np.zeros(m); zp[:n] = z
    diag = np.full(m, PAD_VARIANCE); diag[:n] = 0.0
    rsq = np.zeros(m)
    if context is not None:
        ctx = np.asarray(context, np.float64)
        if ctx.shape != c.shape or np.any(ctx < 0):
            raise ValueError(f"context {ctx.shape} must be [n] = {c.shape} and >= 0")
        rsq[:n] = (ctx / np.maximum(c, floor)) ** 2 / y_sd ** 2
    fit = _fit_fn(int(steps), float(lr), float(ridge))
    with _x64():
        params = {"log_amp": jnp.asarray(np.log(0.5)), "log_ls": jnp.zeros(D_MAX, jnp.float64),
                  "log_noise": jnp.asarray(np.log(0.1)), "b": jnp.asarray(coef[0]), "w": jnp.asarray(w0),
                  "mean_mask": jnp.asarray(mask), "rsq": jnp.asarray(rsq), "log_rel": jnp.asarray(np.log(0.02))}
        p, _ = fit(params, jnp.asarray(Xp), jnp.asarray(zp), jnp.asarray(diag), jnp.asarray(float(n)))
        p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    return LayerGP(kind, Xp, zp, diag, x_mu, x_sd, y_mu, y_sd, floor, p, n)


_PRED_CACHE: dict = {}


def _predict_fn():
    if "f" in _PRED_CACHE:
        return _PRED_CACHE["f"]
    import jax

    @jax.jit
    def pred(params, X, z, diag, Xt):
        cond = _gp(params, X, diag).condition(z, Xt).gp
        return cond.loc, cond.variance

    _PRED_CACHE["f"] = pred
    return pred


def predict_gp(gp: LayerGP, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predictive (mean, variance) of log cost at features [m, D] (raw). Returns two [m] float64."""
    import jax.numpy as jnp

    F = np.atleast_2d(np.asarray(features, dtype=np.float64))
    if F.shape[1] != len(gp.x_mu):
        raise ValueError(f"kind {gp.kind!r}: features have {F.shape[1]} columns, the GP was fitted on {len(gp.x_mu)}")
    if np.any(F <= 0):
        raise ValueError(f"kind {gp.kind!r}: features must be > 0 (they are log-scaled)")
    Xt = (np.log(F) - gp.x_mu) / gp.x_sd
    m = _pad_size(len(Xt))  # pad queries too, to re-use compiled predictions
    Xq = np.zeros((m, D_MAX)); Xq[: len(Xt), : Xt.shape[1]] = Xt
    with _x64():
        params = {k: jnp.asarray(v) for k, v in gp.params.items()}
        loc, var = _predict_fn()(params, jnp.asarray(gp.X), jnp.asarray(gp.z), jnp.asarray(gp.diag), jnp.asarray(Xq))
    loc = np.asarray(loc, np.float64)[: len(Xt)]
    var = np.maximum(np.asarray(var, np.float64)[: len(Xt)], 0.0)
    return loc * gp.y_sd + gp.y_mu, var * gp.y_sd ** 2
