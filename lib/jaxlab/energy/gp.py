"""One Gaussian process per layer kind: ARD Matérn-5/2 (L2 distance) over log features, log targets.

Model [paper: Matérn nu = 2.5; the rest is our choice, following systems.md's proposals]::

    x = log(features) - mu_x                                # centred log features, natural-log units, [D]
    y = log(max(cost, floor)) - mu_y                        # centred log cost
    y = m0(x) + b + w.x_M + f(x) + eps
        f ~ GP(0, a^2 * Matern52_L2(x / l, x' / l))         # ARD, one length scale per feature
        b ~ N(0, sb^2),  w ~ N(0, sw^2 I)                  # mean weights, integrated out
        m0(x) = w0 . x_M                                    # prior mean slope on the mean columns M
        eps ~ N(0, s^2 + r^2 * rsq_i)                       # meter + subtraction noise
        [optional, exact_cols E] + u_{x_E}, u ~ N(0, c^2)   # a random effect per configuration x_E

* Kernel: tinygp's ``Matern52`` uses the **L1** distance by default; THOR's kernel is the
  standard (Euclidean) Matérn-5/2, so we pass ``distance=L2Distance()`` explicitly. ARD through
  ``transforms.Linear(1 / l, ...)`` with one length scale per feature.
* Mean [our choice]: a linear function of a few log features (THOR passes log FLOPs and log
  bytes): costs are close to power laws in the layer sizes, i.e. linear in log space, so the mean
  extrapolates to bigger layers and the GP models the residual (cache, vectorisation, launch
  effects). The mean weights are **not** point-estimated: they get a Gaussian prior and are
  integrated out in closed form (Rasmussen & Williams 2006, §2.7), which adds
  ``sb^2 + sw^2 x_M.x'_M`` to the kernel. With few points (2-3 samples of a kind) a fitted slope
  over near-identical inputs could be anything, and exp() of an extrapolated log cost exploded
  (held-out MAPE ~1e4 % in the old version); with the prior the slope stays near ``w0`` until
  the data say otherwise, and the slope's uncertainty is part of the predictive variance.
  ``w0``: the elasticity of cost w.r.t. work is ~1 (cost ∝ FLOPs or bytes), split evenly over the
  mean columns; ``sw = 0.5`` [our choice: elasticities between ~0 and ~2 are plausible].
* Inputs are only centred, never divided by their sample spread: with n = 2 points the spread is
  arbitrary, and the old per-fit standardisation turned tiny input differences into big slopes.
* Hyperparameters (log a, log l [D], log s, log r) maximise the log marginal likelihood with optax
  Adam through JAX gradients (one jitted ``lax.scan``), clipped to a sane range.
* Noise: a homoscedastic term plus, when ``context`` is given, a heteroscedastic term for the
  subtraction (see :func:`fit_gp`).
* Floor: subtraction of noisy measurements can give a non-positive layer cost (a layer XLA
  fused away, or noise); it is floored at ``floor_frac`` x the median positive cost of that kind
  before the log [our choice]. Its large ``rsq`` (context / floor)^2 makes such a point nearly
  uninformative.
* Padding: training sets are padded to a power of two (>= 16) with points of variance 1e6 that
  carry no information, so active learning re-uses a handful of compiled fits. The GP algebra
  runs in float64 inside a local ``jax.enable_x64`` context (float32 Cholesky fails with the
  padding variance).

Predictions are in natural-log cost space: ``mean_log, var_log`` of the latent cost (mean
weights integrated, measurement noise excluded); ``full_cov=True`` gives the joint covariance.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["LayerGP", "fit_gp", "predict_gp", "gp_kernel", "add_pseudo_points", "PAD_VARIANCE", "D_MAX"]

PAD_VARIANCE = 1e6
D_MAX = 12  # features are zero-padded to this many columns (the most of any layer kind)


class LayerGP(NamedTuple):
    """A fitted GP for one layer kind. Arrays are numpy; ``params`` a dict of numpy arrays.

    ``params``: log_amp, log_ls [D_MAX], log_noise, log_rel (fitted); w0 [D_MAX] prior mean slope,
    mean_mask [D_MAX] (1 on mean columns), log_sw, log_sb (prior sds), rsq [n_pad] (fixed).
    """

    kind: str
    X: np.ndarray  # [n_pad, D_MAX] centred log features (zero-padded columns)
    z: np.ndarray  # [n_pad] centred log targets
    diag: np.ndarray  # [n_pad] 0 for real points, PAD_VARIANCE for padding
    x_mu: np.ndarray  # [D] mean of log features
    y_mu: float  # mean of log targets
    floor: float
    params: dict
    n: int  # real training points


def gp_kernel(params):
    """ARD Matérn-5/2 with the Euclidean (L2) distance, amplitude a^2 (the residual process f)."""
    import jax.numpy as jnp
    from tinygp import kernels, transforms
    from tinygp.kernels.distance import L2Distance

    base = kernels.Matern52(scale=1.0, distance=L2Distance())
    return jnp.exp(2.0 * params["log_amp"]) * transforms.Linear(jnp.exp(-params["log_ls"]), base)


EXACT_SCALE = 1e-2  # length scale (log units) of the configuration term: log(24) - log(16) = 0.41 is 41 of them


def full_kernel(params):
    """Matérn residual + the integrated linear mean: ``sb^2 + sw^2 x_M . x'_M``; with an ``exact_mask``
    (see :func:`fit_gp`'s ``exact_cols``) also ``c^2 [x_E == x'_E]``, a random effect per configuration."""
    import jax.numpy as jnp
    from tinygp import kernels, transforms

    lin = transforms.Linear(jnp.exp(params["log_sw"]) * params["mean_mask"], kernels.DotProduct())
    k = gp_kernel(params) + kernels.Constant(jnp.exp(2.0 * params["log_sb"])) + lin
    if "log_exact" in params:
        # an ExpSquared this narrow is 1 for equal values of the exact columns and ~0 otherwise
        # (exp(-414) for the closest design values, 3 and 4 channels)
        k = k + jnp.exp(2.0 * params["log_exact"]) * transforms.Linear(params["exact_mask"] / EXACT_SCALE,
                                                                        kernels.ExpSquared(scale=1.0))
    return k


def _gp(params, X, diag):
    import jax.numpy as jnp
    from tinygp import GaussianProcess

    def mean(x):
        return jnp.dot(x, params["w0"] * params["mean_mask"])

    noise = jnp.exp(2.0 * params["log_noise"]) + jnp.exp(2.0 * params["log_rel"]) * params["rsq"] + 1e-8
    return GaussianProcess(full_kernel(params), X, diag=diag + noise, mean=mean)


_FIT_CACHE: dict = {}


def _x64():
    """float64 for the GP algebra, locally (the padding variance 1e6 needs it; x64 stays off globally)."""
    import jax

    return jax.enable_x64(True)


def _fit_fn(steps: int, lr: float):
    key = (steps, lr)
    if key in _FIT_CACHE:
        return _FIT_CACHE[key]
    import jax
    import jax.numpy as jnp
    import optax

    opt = optax.adam(lr)

    @jax.jit
    def fit(free, fixed, X, z, diag, n, prior_mu, prior_prec, log_rel_min):
        def nll(p):
            # MAP when prior_prec > 0: independent normal priors on every log hyperparameter
            # (prior_prec = 1 / sd^2; 0 gives the plain marginal likelihood)
            lp = sum(jnp.sum(0.5 * prior_prec * (p[k] - prior_mu[k]) ** 2) for k in p)
            return (-_gp({**p, **fixed}, X, diag).log_probability(z) + lp) / n

        def body(carry, _):
            p, s = carry
            loss, g = jax.value_and_grad(nll)(p)
            upd, s = opt.update(g, s, p)
            p = optax.apply_updates(p, upd)
            # keep noise, amplitude and length scales in a sane range (inputs/targets in log units)
            if "log_exact" in p:
                p = dict(p, log_exact=jnp.clip(p["log_exact"], jnp.log(1e-3), jnp.log(3.0)))
            p = dict(p, log_noise=jnp.clip(p["log_noise"], jnp.log(1e-3), jnp.log(1.0)),
                     log_ls=jnp.clip(p["log_ls"], jnp.log(0.1), jnp.log(50.0)),
                     log_amp=jnp.clip(p["log_amp"], jnp.log(1e-3), jnp.log(3.0)),
                     log_rel=jnp.clip(p["log_rel"], log_rel_min, jnp.log(1.0)))
            return (p, s), loss

        (p, _), losses = jax.lax.scan(body, (free, opt.init(free)), None, length=steps)
        return p, losses

    _FIT_CACHE[key] = fit
    return fit


def _pad_size(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def fit_gp(kind: str, features: np.ndarray, costs: np.ndarray, *, context: np.ndarray | None = None,
           mean_cols: Sequence[int] | None = None, steps: int = 300, lr: float = 0.05,
           slope_prior: float | None = None, slope_sd: float = 0.5, offset_sd: float = 2.0,
           floor_frac: float = 0.05, hyper_prior_sd: float | None = None, rel_floor: float = 1e-4,
           exact_cols: Sequence[int] | None = None) -> LayerGP:
    """Fits one GP. features: [n, D] positive raw features (D <= D_MAX); costs: [n] (joules or seconds).

    context: [n] the scale of the measurements each cost was subtracted from (THOR:
    ``sqrt(c_{i-1}^2 + c_i^2)``). When given, point i gets extra noise variance
    ``r^2 * (context_i / cost_i)^2`` in log space with a learnt relative measurement noise ``r``
    [our choice: heteroscedastic subtraction noise]: a small layer subtracted from two big
    variants is mostly noise and is down-weighted.
    mean_cols: feature columns of the linear mean (default: all). THOR passes the FLOPs and bytes
    columns. slope_prior: prior mean of the total elasticity over ``mean_cols`` (split evenly;
    default 1.0, i.e. cost ∝ work); slope_sd / offset_sd: prior sds of each slope and of the
    offset, in log units.
    hyper_prior_sd: ``None`` (default) maximises the marginal likelihood (type-II ML); a number
    maximises the posterior instead (MAP) under independent normal priors of this sd on every log
    hyperparameter (log amplitude, log length scales, log noise, log relative noise), centred at
    their starting values (amplitude 0.3, length scale = the feature's spread >= 1 nat, noise 0.05,
    relative noise max(0.02, rel_floor)) [our choice; an option for few-sample fits, e.g. early active learning].
    rel_floor: lower bound of the relative measurement noise ``r`` (default 1e-4, the clip). A kind
    with few samples, or samples its mean can interpolate, otherwise drives ``r`` to the clip and
    becomes overconfident; :func:`jaxlab.energy.thor.fit_thor` passes the meter's own noise level.
    exact_cols [our choice, off by default]: feature columns that name a *configuration* (THOR's conv:
    input channels, output channels, kernel). Adds ``c^2 [x_E == x'_E]`` to the kernel, a random
    effect shared by every sample of one configuration whatever its other features, with a fitted
    amplitude ``c`` (starting at 0.3 nats, clipped to [1e-3, 3]). A kernel library's slow path for one
    channel combination (XLA:CPU's 3 -> 24 channel conv, 1.5-2.5x its neighbours per FLOP) is
    then learnt from the samples of that combination without shortening the length scales that
    every other combination shares; a combination never profiled gets the effect's prior, i.e.
    only more variance.
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
    if slope_sd <= 0 or offset_sd <= 0:
        raise ValueError(f"slope_sd={slope_sd} and offset_sd={offset_sd} must be > 0")
    if not (np.isfinite(rel_floor) and 0 < rel_floor <= 1):
        raise ValueError(f"rel_floor={rel_floor} must be in (0, 1] (a relative noise level in log units)")
    if hyper_prior_sd is not None and not (np.isfinite(hyper_prior_sd) and hyper_prior_sd > 0):
        raise ValueError(f"hyper_prior_sd={hyper_prior_sd} must be a positive number (or None for no prior)")
    pos = c[c > 0]
    floor = float(floor_frac * np.median(pos)) if pos.size else 1e-12
    y = np.log(np.maximum(c, floor))
    L = np.log(F)
    x_mu = L.mean(0)
    y_mu = float(y.mean())
    X = L - x_mu
    z = y - y_mu
    n, d = X.shape
    cols = list(range(d)) if mean_cols is None else [int(i) for i in mean_cols]
    if any(not 0 <= i < d for i in cols):
        raise ValueError(f"mean_cols={cols} must index the {d} feature columns")
    mask = np.zeros(D_MAX)
    mask[cols] = 1.0
    w0 = np.zeros(D_MAX)
    w0[cols] = (1.0 if slope_prior is None else float(slope_prior)) / max(len(cols), 1)
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
        rsq[:n] = (ctx / np.maximum(c, floor)) ** 2
    # length scales start at the spread of each feature (>= 1 nat)
    ls0 = np.ones(D_MAX); ls0[:d] = np.maximum(X.std(0), 1.0)
    fit = _fit_fn(int(steps), float(lr))
    fixed = {"w0": w0, "mean_mask": mask, "log_sw": np.log(slope_sd), "log_sb": np.log(offset_sd), "rsq": rsq}
    free = {"log_amp": np.log(0.3), "log_ls": np.log(ls0), "log_noise": np.log(0.05), "log_rel": np.log(max(0.02, rel_floor))}
    if exact_cols is not None:
        ecols = [int(i) for i in exact_cols]
        if not ecols or any(not 0 <= i < d for i in ecols):
            raise ValueError(f"exact_cols={list(exact_cols)} must be a non-empty list of the {d} feature columns")
        emask = np.zeros(D_MAX)
        emask[ecols] = 1.0
        fixed["exact_mask"] = emask
        free["log_exact"] = np.log(0.3)
    prior_mu = {k: np.asarray(v, np.float64) for k, v in free.items()}
    prior_prec = 0.0 if hyper_prior_sd is None else 1.0 / float(hyper_prior_sd) ** 2
    for rnd in range(2 if context is not None else 1):
        if rnd == 1:
            # Second pass [our choice]: the subtraction-noise weight of a point must not depend on
            # its own noisy value (weighting by the observed cost favours draws that came out high
            # and biased small layers upwards by up to e^0.9 here), so it uses the first fit's
            # smoothed cost at that point instead.
            chat = np.exp(predict_gp(gp, F)[0])
            rsq = fixed["rsq"].copy()
            rsq[:n] = (ctx / chat) ** 2
            fixed = dict(fixed, rsq=rsq)
        with _x64():
            p, _ = fit({k: jnp.asarray(v) for k, v in free.items()}, {k: jnp.asarray(v) for k, v in fixed.items()},
                       jnp.asarray(Xp), jnp.asarray(zp), jnp.asarray(diag), jnp.asarray(float(n)),
                       {k: jnp.asarray(v) for k, v in prior_mu.items()}, jnp.asarray(prior_prec),
                       jnp.asarray(np.log(max(rel_floor, 1e-4))))
            free = {k: np.asarray(v, np.float64) for k, v in p.items()}
        gp = LayerGP(kind, Xp, zp, diag, x_mu, y_mu, floor, {**free, **{k: np.asarray(v, np.float64) for k, v in fixed.items()}}, n)
    return gp


_PRED_CACHE: dict = {}


def _predict_fn(full: bool):
    if full in _PRED_CACHE:
        return _PRED_CACHE[full]
    import jax

    @jax.jit
    def pred(params, X, z, diag, Xt):
        cond = _gp(params, X, diag).condition(z, Xt).gp
        return cond.loc, (cond.covariance if full else cond.variance)

    _PRED_CACHE[full] = pred
    return pred


def _queries(gp: LayerGP, features) -> np.ndarray:
    F = np.atleast_2d(np.asarray(features, dtype=np.float64))
    if F.ndim != 2 or F.shape[1] != len(gp.x_mu):
        raise ValueError(f"kind {gp.kind!r}: features {F.shape} must be [m, {len(gp.x_mu)}] (the GP's columns)")
    if np.any(F <= 0) or not np.all(np.isfinite(F)):
        raise ValueError(f"kind {gp.kind!r}: features must be finite and > 0 (they are log-scaled)")
    return np.log(F) - gp.x_mu


def predict_gp(gp: LayerGP, features: np.ndarray, *, full_cov: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Predictive mean and variance of log cost at raw features [m, D].

    Returns ([m] mean, [m] variance) float64, or ([m], [m, m] covariance) with ``full_cov``.
    """
    import jax.numpy as jnp

    Xt = _queries(gp, features)
    k = len(Xt)
    m = _pad_size(k)  # pad queries too, to re-use compiled predictions
    Xq = np.zeros((m, D_MAX)); Xq[:k, : Xt.shape[1]] = Xt
    with _x64():
        params = {key: jnp.asarray(v) for key, v in gp.params.items()}
        loc, var = _predict_fn(full_cov)(params, jnp.asarray(gp.X), jnp.asarray(gp.z), jnp.asarray(gp.diag), jnp.asarray(Xq))
    loc = np.asarray(loc, np.float64)[:k] + gp.y_mu
    var = np.asarray(var, np.float64)
    if full_cov:
        cov = var[:k, :k]
        cov = 0.5 * (cov + cov.T)
        np.fill_diagonal(cov, np.maximum(np.diag(cov), 0.0))
        return loc, cov
    return loc, np.maximum(var[:k], 0.0)


def add_pseudo_points(gp: LayerGP, features: np.ndarray, rsq: np.ndarray) -> LayerGP:
    """The GP as if ``features`` [k, D] had been observed at their predicted mean ("kriging believer").

    Hyperparameters stay fixed, so the predictive *variance* is exactly the posterior variance after
    observing these points with noise ``s^2 + r^2 rsq`` (it does not depend on the values), and the
    mean is unchanged. Used to pick a batch of active-learning queries greedily.
    """
    Xt = _queries(gp, features)
    rsq = np.broadcast_to(np.asarray(rsq, np.float64), (len(Xt),))
    mu, _ = predict_gp(gp, features)
    n_new = gp.n + len(Xt)
    m = max(len(gp.z), _pad_size(n_new))
    X = np.zeros((m, D_MAX)); X[: len(gp.X)] = gp.X; X[gp.n:n_new, : Xt.shape[1]] = Xt
    z = np.zeros(m); z[: len(gp.z)] = gp.z; z[gp.n:n_new] = mu - gp.y_mu
    diag = np.full(m, PAD_VARIANCE); diag[: len(gp.diag)] = gp.diag; diag[gp.n:n_new] = 0.0
    r = np.zeros(m); r[: len(gp.params["rsq"])] = gp.params["rsq"]; r[gp.n:n_new] = rsq
    return gp._replace(X=X, z=z, diag=diag, n=n_new, params=dict(gp.params, rsq=r))
