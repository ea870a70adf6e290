"""THOR: whole-model training cost as the sum of per-layer GP predictions, fitted by active learning.

Pipeline (arXiv 2501.16397, details per systems.md §1; [our choice] where marked):

1. Sample profiling *chains* (3-layer stacks with an input shape and batch) from a design space
   (:func:`sample_chain`), measure their 0-3-layer prefix variants and get per-layer costs by
   subtraction (:mod:`jaxlab.energy.profiler`).
2. Fit one GP per layer kind plus one for the per-iteration overhead ("fixed")
   (:func:`fit_thor`, :mod:`jaxlab.energy.gp`).
3. Estimate a whole model as ``fixed + sum_l layer_l`` (``+ loss`` when the fit had classifier-loss
   samples, :func:`jaxlab.energy.profiler.loss_pair`) with an uncertainty band (:func:`estimate`).
4. Active learning (:func:`active_learning`): from a pool of candidate chains, repeatedly profile
   the chain of largest predictive variance of its (log) cost; a batch of several chains is picked
   greedily, each conditioned on the ones before (:func:`select_batch`).

All costs are per training iteration, in the meter's quantity (joules, or seconds for the wall
clock).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

from jaxlab.energy.gp import LayerGP, add_pseudo_points, fit_gp, predict_gp
from jaxlab.energy.profiler import (
    FEATURES, LSTM, Act, BatchNorm, Conv, Dense, LayerSample, Network, Pool, cost_terms, feature_vector,
    place,
)
from jaxlab.energy.profiler import layer_kind as P_kind

__all__ = [
    "ThorModel", "Estimate", "fit_thor", "estimate", "mape", "chain_variance", "select_batch", "active_learning",
    "DesignSpace", "sample_chain", "sample_model", "sample_model_chain", "conv_config_chains", "pool_config_chains",
    "MODEL_FAMILIES",
]


class ThorModel(NamedTuple):
    gps: dict  # kind -> LayerGP
    n_samples: dict  # kind -> number of training samples


class Estimate(NamedTuple):
    """Whole-model estimate: ``total`` and its std; ``lower``/``upper`` = total -/+ 2 std (>= 0);
    ``per_layer``: [(kind, median cost)] with the overhead first."""

    total: float
    std: float
    lower: float
    upper: float
    per_layer: list


_EXACT_CONV = ("cin", "cout", "kernel")  # the conv configuration of fit_thor's exact_conv


def _group(samples: Sequence[LayerSample]) -> dict:
    by: dict = {}
    for s in samples:
        by.setdefault(s.kind, []).append(s)
    return by


def fit_thor(samples: Sequence[LayerSample], *, steps: int = 300, lr: float = 0.05, floor_frac: float = 0.05,
             hyper_prior_sd: float | None = None, meter_noise_floor: bool = True,
             exact_conv: bool = False) -> ThorModel:
    """One GP per layer kind (and 'fixed') from subtraction samples. Kinds with < 2 samples are skipped.

    Layer kinds: linear mean over log FLOPs and log bytes with prior elasticity 1 (cost ∝ work);
    'fixed' (the per-iteration overhead): linear mean over its features with prior slope 0
    [our choice, see :mod:`jaxlab.energy.gp`]. ``hyper_prior_sd``: see :func:`gp.fit_gp` (None: type-II ML).

    ``meter_noise_floor`` [our choice, default on]: the relative measurement noise ``r`` of every layer
    kind is bounded below by the meter's own noise, read off the 'fixed' GP (the per-iteration
    overhead is measured directly, not by subtraction, so its fitted ``sqrt(s^2 + r^2)`` is the
    meter's relative noise in log units). The noise belongs to the meter, not to a layer kind; fitted
    per kind by maximum likelihood, a kind with few samples, or samples its linear mean can pass
    through, drove ``r`` to the 1e-4 clip and became overconfident. Measured on the simulated device
    (noise 0.02; the paper preset's AL pool, stream 1, seed 13, 24 chains): 3 conv samples gave the
    conv GP r = 1e-4 and held-out conv z-scores of rms 121 (errors of 0.1-0.35 nats at predicted sd
    0.002-0.004), so max-variance active learning scored every conv chain ~0 and picked none for
    two batches; with the floor (0.020 there, the simulated meter's 0.02) the rms z-score was 2.0 and
    conv chains scored highest (best conv chain 0.041 against 0.005 for the rest).
    ``False``: every kind fits its own ``r`` down to the clip (the earlier behaviour).

    ``exact_conv`` [our choice, default off]: the conv GP gets a random effect per (input channels,
    output channels, kernel) configuration (:func:`gp.fit_gp`'s ``exact_cols``), for XLA:CPU's
    per-combination conv slow paths.
    """
    if not samples:
        raise ValueError("fit_thor: no samples; profile some chains first")
    gps, counts = {}, {}
    groups = _group(samples)
    rel_floor = 1e-4  # gp.fit_gp's own clip, until 'fixed' gives the meter's noise
    # 'fixed' first: with meter_noise_floor its fitted noise is the floor of every other kind's r
    for kind in sorted(groups, key=lambda k: k != "fixed"):
        ss = groups[kind]
        counts[kind] = len(ss)
        if len(ss) < 2:
            continue
        F = np.stack([feature_vector(kind, s.features) for s in ss])
        names = FEATURES[kind]
        mean_cols = [names.index(c) for c in ("flops", "bytes") if c in names] or None
        gps[kind] = fit_gp(kind, F, np.array([s.cost for s in ss]), context=np.array([s.context for s in ss]),
                           mean_cols=mean_cols, slope_prior=1.0 if mean_cols else 0.0,
                           steps=steps, lr=lr, floor_frac=floor_frac, hyper_prior_sd=hyper_prior_sd,
                           rel_floor=rel_floor,
                           exact_cols=[names.index(c) for c in _EXACT_CONV] if exact_conv and kind == "conv" else None)
        if kind == "fixed" and meter_noise_floor:
            prm = gps[kind].params  # 'fixed' is measured directly (context = its cost), so s^2 + r^2 is its noise
            rel_floor = min(float(np.sqrt(np.exp(2 * prm["log_noise"]) + np.exp(2 * prm["log_rel"]))), 1.0)
    return ThorModel(gps, counts)


def _terms(net: Network, model: ThorModel | None = None) -> list[tuple[str, dict]]:
    """Cost terms of ``net``; the classifier-loss term only when ``model`` has a 'loss' GP."""
    return cost_terms(net, with_loss=model is not None and "loss" in model.gps)


def _predict_terms(model: ThorModel, terms, full_cov: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Log-space mean [n] and variance [n] (or covariance [n, n]: joint within a kind, 0 across
    kinds, whose GPs are independent) of the cost terms ``[(kind, features)]``."""
    mu = np.zeros(len(terms))
    cov = np.zeros((len(terms), len(terms))) if full_cov else np.zeros(len(terms))
    by: dict = {}
    for i, (k, f) in enumerate(terms):
        by.setdefault(k, []).append((i, f))
    for k, items in by.items():
        if k not in model.gps:
            raise ValueError(f"no GP for layer kind {k!r} (fitted kinds: {sorted(model.gps)}); "
                             "profile chains that contain this kind")
        idx = np.array([i for i, _ in items])
        m, v = predict_gp(model.gps[k], np.stack([feature_vector(k, f) for _, f in items]), full_cov=full_cov)
        mu[idx] = m
        if full_cov:
            cov[np.ix_(idx, idx)] = v
        else:
            cov[idx] = v
    return mu, cov


def _sum_moments(mu: np.ndarray, cov: np.ndarray) -> tuple[float, float, float]:
    """(sum of medians, mean, variance) of ``sum_i exp(g_i)`` for jointly Gaussian g ~ N(mu, cov)."""
    v = np.diag(cov)
    a = mu + 0.5 * v
    var = float(np.sum(np.exp(a[:, None] + a[None, :]) * np.expm1(cov)))
    return float(np.exp(mu).sum()), float(np.exp(a).sum()), max(var, 0.0)


def estimate(model: ThorModel, net: Network) -> Estimate:
    """``fixed + sum of layers`` for ``net`` (``+ loss`` for a classifier when ``model`` was fitted
    with 'loss' samples from :func:`jaxlab.energy.profiler.loss_pair`).

    Each term is log-normal with the GP's log mean/variance; the point estimate sums the medians
    ``exp(mu)`` [our choice: robust to the heavy right tail of exp]. The std is that of the sum of
    the jointly log-normal terms, with the GP's joint covariance between the terms of one kind
    (two Dense layers share the same uncertain mean slope, so their errors add up, not average
    out) and independence across kinds.
    """
    terms = _terms(net, model)
    mu, cov = _predict_terms(model, terms, full_cov=True)
    total, _, var = _sum_moments(mu, cov)
    std = float(np.sqrt(var))
    return Estimate(total, std, max(total - 2 * std, 0.0), total + 2 * std,
                    [(k, float(c)) for (k, _), c in zip(terms, np.exp(mu))])


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error, 100/n * sum |p - m| / m (percent)."""
    p, m = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    if p.shape != m.shape or p.ndim != 1 or p.size == 0:
        raise ValueError(f"predicted {p.shape} and measured {m.shape} must be equal non-empty 1-D")
    if np.any(m <= 0):
        raise ValueError("measured values must be > 0 for MAPE")
    return float(100.0 * np.mean(np.abs(p - m) / m))


def _chain_terms(chain: Network):
    return _terms(Network(chain.input_shape, chain.layers, chain.batch, None))


ACQUISITIONS = ("log", "linear", "layers", "alc", "alc_models")


def _pool_terms(chains: Sequence[Network]) -> tuple[list, np.ndarray]:
    """Every chain's cost terms in one list, and the index of the chain each term belongs to."""
    terms, owner = [], []
    for j, c in enumerate(chains):
        t = _chain_terms(c)
        terms += t
        owner += [j] * len(t)
    return terms, np.array(owner)


def _pool_scores(model: ThorModel, chains: Sequence[Network], acquisition: str = "log") -> np.ndarray:
    """:func:`chain_variance` of many chains with one GP call per kind."""
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"acquisition={acquisition!r}: use one of {ACQUISITIONS}")
    terms, owner = _pool_terms(chains)
    scores = np.full(len(chains), np.inf)
    missing = {k for k, _ in terms} - set(model.gps)
    ok = [i for i, (k, _) in enumerate(terms) if k not in missing]
    if not ok:
        return scores
    mu, cov = _predict_terms(model, [terms[i] for i in ok], full_cov=True)
    own = owner[ok]
    bad = {owner[i] for i, (k, _) in enumerate(terms) if k in missing}
    for j in range(len(chains)):
        if j in bad:
            continue
        sel = np.flatnonzero(own == j)
        if acquisition == "layers":
            scores[j] = float(np.sum(np.diag(cov)[sel]))
            continue
        _, mean, var = _sum_moments(mu[sel], cov[np.ix_(sel, sel)])
        scores[j] = np.log1p(var / mean ** 2) if acquisition == "log" else var
    return scores


def chain_variance(model: ThorModel, chain: Network, acquisition: str = "log") -> float:
    """Acquisition score of a candidate chain: the predictive variance of the chain's log total
    cost, ``log(1 + Var[C] / E[C]^2)`` for ``C = fixed + sum of its layers`` (jointly log-normal).

    [our choice] This is "the maximum posterior variance" over the chain's *cost*, so a layer
    weighs by its share of the cost: a tiny activation whose subtracted cost is mostly noise does
    not dominate the pick, as it did with a sum of per-layer log variances. A chain with a kind
    that has no GP yet scores +inf (it must be profiled first).

    ``acquisition`` [our choice, compared in the experiment]: ``'log'`` (above, the default),
    ``'linear'``: ``Var[C]`` in cost units (favours expensive chains, whose errors dominate
    whole-model totals), ``'layers'``: the sum of the terms' log variances (every layer weighs
    the same, whatever its share of the cost).
    """
    return float(_pool_scores(model, [chain], acquisition)[0])


def _prefix_rsq(mu: np.ndarray) -> np.ndarray:
    """Relative subtraction-noise factors of a chain's terms from their predicted log costs: term i
    is the difference of prefix costs c_{i-1}, c_i, so its noise scales with sqrt(c_{i-1}^2 + c_i^2)
    (the fit's ``rsq`` model; shared by :func:`_believe_chain` and :func:`select_batch_alc`)."""
    c = np.cumsum(np.exp(mu))
    ctx = np.concatenate([[c[0]], np.sqrt(c[:-1] ** 2 + c[1:] ** 2)])
    return (ctx / np.exp(mu)) ** 2


def _believe_chain(model: ThorModel, chain: Network) -> ThorModel:
    """``model`` as if ``chain`` had been profiled (kriging believer, see :func:`add_pseudo_points`):
    its terms become pseudo-observations at their predicted medians, with the subtraction noise
    their predicted prefix costs would give."""
    terms = _chain_terms(chain)
    mu, _ = _predict_terms(model, terms)
    rsq = _prefix_rsq(mu)
    gps = dict(model.gps)
    by: dict = {}
    for i, (k, f) in enumerate(terms):
        by.setdefault(k, []).append(i)
    for k, idx in by.items():
        gps[k] = add_pseudo_points(gps[k], np.stack([feature_vector(k, terms[i][1]) for i in idx]), rsq[idx])
    return ThorModel(gps, model.n_samples)


def select_batch_alc(model: ThorModel, pool: Sequence[Network], candidates: Sequence[int], k: int,
                     targets: Sequence[Network] | None = None) -> list[int]:
    """``k`` chains from ``candidates`` by greedy *expected variance reduction* over the pool
    (ALC, Cohn 1996) [our choice, an alternative to the paper's maximum variance]:

    score(c) = sum over every pool chain j of the drop in Var[log C_j] that profiling c would give,

    with Var[log C_j] ~= w_j^T Sigma w_j (delta method; w_j = each term's share of chain j's
    predicted cost, Sigma = the GPs' joint posterior covariance of all pool terms, block-diagonal
    over layer kinds) and c's terms observed with the fit's noise model s^2 + r^2 rsq. Where max
    variance picks the most uncertain chain (often an extreme corner of the design space), ALC picks
    the chain that most reduces uncertainty about the pool as a whole, the stand-in for the models
    to be estimated. Exact Gaussian updates (rank-|S| downdates of Sigma), no refit between picks.
    A candidate with a layer kind that has no GP yet is picked first (score +inf).

    Measured (simulated device, the paper preset's AL pool on stream 0, seeds 0-2, 2026-12-02): worse
    than the default ``'log'`` max variance. The seed-mean ALC curve flattened at 4.0-4.5% MAPE from
    24 chains on, while random sampling went on to 2.95% at 60 chains (per-seed fractions 1.0 / never
    / never). Kept as an option for comparison, not as the default.

    ``targets`` (whole networks, e.g. a fresh draw of the model families to be estimated; never the
    held-out models themselves): the variance to reduce is that of the targets' log totals
    (``fixed + layers``) instead of the pool chains' [our choice, ``acquisition='alc_models'``]:
    THOR estimates whole models, so the uncertainty that matters is the one on whole models.
    Measured (simulated device, the paper preset's AL pool on stream 0, seeds 0-2, 48 targets,
    2026-12-05): better than ``'log'`` early (seed-mean 6.96% vs 20.3% MAPE at 12 chains, random
    8.84%) but flatter later (2.64% vs 2.14% at 60); it reached random sampling's final 3.27% at 54
    chains (fraction 0.9, per seed 0.9 / never / 0.5) against ``'log'``'s 48 (0.8; 0.5 / 0.9 / 0.8).
    Not the default.
    """
    terms, owner = _pool_terms(pool)
    n_w = n_nets = len(pool)  # n_w: the columns of W, the networks whose log-cost variance is reduced
    if targets is not None:
        if not len(targets):
            raise ValueError("select_batch_alc: targets is empty; pass None to reduce the pool's variance")
        t_terms, t_owner = _pool_terms(targets)
        terms, owner, n_w = terms + t_terms, np.concatenate([owner, len(pool) + t_owner]), len(targets)
        n_nets += n_w
    kinds = sorted({kd for kd, _ in terms})
    blocks, w_all = {}, np.zeros(len(terms))
    mu_all = np.zeros(len(terms))
    for kd in kinds:
        idx = np.array([i for i, (kk, _) in enumerate(terms) if kk == kd])
        if kd in model.gps:
            mu, cov = predict_gp(model.gps[kd], np.stack([feature_vector(kd, terms[i][1]) for i in idx]), full_cov=True)
            mu_all[idx] = mu
            prm = model.gps[kd].params
            blocks[kd] = dict(idx=idx, cov=cov, s2=float(np.exp(2 * prm["log_noise"])), r2=float(np.exp(2 * prm["log_rel"])))
    missing = {kd for kd in kinds if kd not in blocks}
    rsq = np.zeros(len(terms))
    for j in range(n_nets):
        sel = np.flatnonzero(owner == j)
        e = np.exp(mu_all[sel])
        w_all[sel] = e / e.sum()
        rsq[sel] = _prefix_rsq(mu_all[sel])
    col = owner - len(pool) if targets is not None else owner  # term -> its column of W (< 0: not a target)
    # per chain and kind: its terms' positions inside the kind's block, and their noise matrix
    chain_obs: dict = {}
    for kd, b in blocks.items():
        loc = {int(g): a for a, g in enumerate(b["idx"])}
        b["W"] = np.zeros((len(b["idx"]), n_w))
        tgt = np.flatnonzero(col[b["idx"]] >= 0)
        b["W"][tgt, col[b["idx"]][tgt]] = w_all[b["idx"]][tgt]
        for a, g in enumerate(b["idx"]):
            if owner[g] < len(pool):
                chain_obs.setdefault(int(owner[g]), {}).setdefault(kd, []).append(a)
    for j, per in chain_obs.items():
        for kd, S in per.items():
            b = blocks[kd]
            per[kd] = (S, np.diag(b["s2"] + b["r2"] * rsq[b["idx"][S]]))
    rest = [int(i) for i in candidates]
    unfit = {j for j in rest if any(terms[i][0] in missing for i in np.flatnonzero(owner == j))}
    pick: list = []
    while rest and len(pick) < k:
        scores = np.zeros(len(rest))
        for a, j in enumerate(rest):
            if j in unfit:
                scores[a] = np.inf
                continue
            for kd, (S, N) in chain_obs.get(j, {}).items():
                cov = blocks[kd]["cov"]
                BS = cov[S] @ blocks[kd]["W"]  # [|S|, P]
                scores[a] += float(np.sum(BS * np.linalg.solve(cov[np.ix_(S, S)] + N, BS)))
        j = rest.pop(int(np.argmax(scores)))
        pick.append(j)
        for kd, (S, N) in chain_obs.get(j, {}).items():
            cov = blocks[kd]["cov"]
            CS = cov[S]
            blocks[kd]["cov"] = cov - CS.T @ np.linalg.solve(cov[np.ix_(S, S)] + N, CS)
    return pick


def _check_targets(acquisition: str, targets) -> None:
    if acquisition == "alc_models" and targets is None:
        raise ValueError("acquisition='alc_models' needs targets: whole networks drawn like the models to be estimated")


def select_batch(model: ThorModel, pool: Sequence[Network], candidates: Sequence[int], k: int,
                 acquisition: str = "log", targets: Sequence[Network] | None = None) -> list[int]:
    """``k`` chains from ``candidates`` (indices into ``pool``) by greedy conditional variance.

    Pick the chain of largest :func:`chain_variance`, pretend it was profiled (the GP variance
    does not depend on the values it would give), re-score, repeat [our choice: a batch of the
    ``k`` largest variances of one fitted model would pick near-duplicate chains]. With ``k = 1``
    this is exactly "profile the candidate of maximum posterior variance".
    ``'alc'`` / ``'alc_models'``: :func:`select_batch_alc` over the pool / over ``targets``.
    """
    _check_targets(acquisition, targets)
    if acquisition in ("alc", "alc_models"):
        return select_batch_alc(model, pool, candidates, k, targets if acquisition == "alc_models" else None)
    rest = [int(i) for i in candidates]
    pick: list = []
    for _ in range(min(k, len(rest))):
        scores = _pool_scores(model, [pool[i] for i in rest], acquisition)
        j = int(np.argmax(scores))  # first max: stable
        i = rest.pop(j)
        pick.append(i)
        if len(pick) < k and np.isfinite(scores[j]):
            model = _believe_chain(model, pool[i])
    return pick


def active_learning(pool: Sequence[Network], samples_of: Callable[[int], list], evaluate: Callable[[ThorModel], float],
                    *, n_init: int, n_max: int, step: int, strategy: str = "variance", seed: int = 0,
                    fit_kw: dict | None = None, acquisition: str = "log",
                    targets: Sequence[Network] | None = None) -> list[dict]:
    """Pool-based active learning over candidate chains.

    pool: candidate chains; samples_of(i) -> LayerSamples of chain i (profiles it, or reads the
    profiling DB); evaluate(model) -> a score (e.g. MAPE on held-out models). Starts from
    ``n_init`` chains drawn with ``seed`` (the same start for both strategies), then adds ``step``
    chains per round up to ``n_max``: by greedy conditional variance (:func:`select_batch`,
    ``strategy='variance'``) or in random order (``'random'``, the order also drawn with ``seed``).
    ``acquisition``: the variance scored by :func:`chain_variance`, or ALC (:func:`select_batch_alc`;
    ``'alc_models'`` reduces the variance of ``targets``).
    Returns ``[{n_chains, score, chosen}]`` per round.
    """
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"acquisition={acquisition!r}: use one of {ACQUISITIONS}")
    _check_targets(acquisition, targets)
    if strategy not in ("variance", "random"):
        raise ValueError(f"strategy={strategy!r}: use 'variance' or 'random'")
    if not (0 < n_init <= n_max <= len(pool)) or step < 1:
        raise ValueError(f"need 0 < n_init={n_init} <= n_max={n_max} <= len(pool)={len(pool)} and step >= 1")
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(pool))]
    chosen = _covering_init(pool, order, n_init)
    curve = []
    fit_kw = fit_kw or {}
    while True:
        samples = [s for i in chosen for s in samples_of(i)]
        model = fit_thor(samples, **fit_kw)
        curve.append({"n_chains": len(chosen), "score": float(evaluate(model)), "chosen": [int(i) for i in chosen]})
        if len(chosen) >= n_max:
            return curve
        k = min(step, n_max - len(chosen))
        taken = set(chosen)
        if strategy == "random":
            pick = [i for i in order if i not in taken][:k]
        else:
            pick = select_batch(model, pool, [i for i in range(len(pool)) if i not in taken], k, acquisition, targets)
        chosen = chosen + pick


def _covering_init(pool: Sequence[Network], order: list, n_init: int) -> list:
    """``n_init`` chains in ``order``, but first, rarest kind first, enough chains that every layer
    kind of the pool appears >= 2 times, so each kind has a GP from the start (may exceed
    ``n_init`` when the pool needs it) [our choice; the same start for both strategies]."""
    kinds_of = {i: ["fixed"] + [p.kind for p in place(Network(pool[i].input_shape, pool[i].layers, pool[i].batch))]
                for i in order}
    freq: dict = {}
    for ks in kinds_of.values():
        for k in set(ks):
            freq[k] = freq.get(k, 0) + 1
    chosen: list = []
    counts: dict = {}

    def take(i):
        chosen.append(i)
        for k in kinds_of[i]:
            counts[k] = counts.get(k, 0) + 1

    for kind in sorted(freq, key=lambda k: freq[k]):
        for i in order:
            if counts.get(kind, 0) >= 2:
                break
            if i not in chosen and kind in kinds_of[i]:
                take(i)
    for i in order:
        if len(chosen) >= n_init:
            break
        if i not in chosen:
            take(i)
    return chosen


# ---------------------------------------------------------------------------------------------
# Design space: profiling chains and held-out whole models
# ---------------------------------------------------------------------------------------------
class DesignSpace(NamedTuple):
    """Ranges to sample from [our choice, sized for a shared 2-core CPU]."""

    image_sizes: tuple = (8, 12, 16, 20, 24, 28)
    in_channels: tuple = (1, 3, 8, 16, 32)
    conv_features: tuple = (4, 8, 16, 24, 32, 48, 64)
    kernels: tuple = (1, 3, 5)
    dense_features: tuple = (16, 32, 64, 128, 256, 512)
    vector_sizes: tuple = (32, 64, 128, 256, 512, 784)
    batches: tuple = (8, 16, 32, 64)
    seq_lens: tuple = (8, 16)
    lstm_hidden: tuple = (16, 32, 64)
    max_train_flops: float = 1.5e9
    max_params: int = 2_000_000
    lstm: bool = False


def _ok(net: Network, space: DesignSpace) -> bool:
    try:
        placed = place(net)
    except ValueError:
        return False
    return (sum(p.train_flops for p in placed) <= space.max_train_flops
            and sum(p.n_params for p in placed) <= space.max_params)


# Which layer may follow which in a profiling chain, with weights [our choice]: the transitions of
# real CNN/MLP stacks (Conv -> BN/Act/Pool, Act -> Pool/Conv/Dense, ...), never two BN/Act/Pool in
# a row, so that every layer is profiled in the kind of context it has in whole models.
_IMAGE_NEXT = {
    None: {"conv": 0.7, "dense": 0.1, "bn": 0.06, "act": 0.07, "pool": 0.07},
    "conv": {"bn": 0.25, "act": 0.35, "pool": 0.2, "conv": 0.1, "dense": 0.1},
    "bn": {"act": 0.7, "pool": 0.15, "conv": 0.15},
    "act": {"pool": 0.4, "conv": 0.35, "dense": 0.25},
    "pool": {"conv": 0.5, "dense": 0.3, "act": 0.1, "bn": 0.1},
}
_VECTOR_NEXT = {None: {"dense": 1.0}, "dense": {"act": 0.7, "dense": 0.3}, "act": {"dense": 1.0},
                "lstm": {"dense": 1.0}, "conv": {"act": 0.5, "dense": 0.5}, "pool": {"dense": 1.0}, "bn": {"dense": 1.0}}


def _next_layer(rng, shape, prev, space: DesignSpace):
    if len(shape) == 2:
        return LSTM(int(rng.choice(space.lstm_hidden))) if prev is None else Dense(int(rng.choice(space.dense_features)))
    table = (_IMAGE_NEXT if len(shape) == 3 else _VECTOR_NEXT)[prev]
    kinds = [k for k in table if not (k == "pool" and min(shape[:2]) < 4)]
    w = np.array([table[k] for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    if kind == "conv":
        return Conv(int(rng.choice(space.conv_features)), int(rng.choice(space.kernels)),
                    2 if rng.random() < 0.15 else 1, "SAME" if rng.random() < 0.7 else "VALID")
    if kind == "bn":
        return BatchNorm()
    if kind == "act":
        return Act(str(rng.choice(["relu", "relu", "tanh"])))
    if kind == "pool":
        return Pool(2, str(rng.choice(["max", "max", "avg"])))
    return Dense(int(rng.choice(space.dense_features)))


def _grow(rng, shape, layers: list, space: DesignSpace, length: int) -> list | None:
    """``layers`` extended by :func:`_next_layer` draws to ``length`` layers on input ``shape``, or None
    as soon as a drawn layer does not fit the shape before it (no further draws)."""
    layers = list(layers)
    s = place(Network(shape, tuple(layers), 1))[-1].out_shape if layers else shape
    prev = P_kind(layers[-1]) if layers else None
    while len(layers) < length:
        spec = _next_layer(rng, s, prev, space)
        prev = P_kind(spec)
        layers.append(spec)
        try:
            s = place(Network(shape, tuple(layers), 1))[-1].out_shape
        except ValueError:
            return None
    return layers


def sample_chain(rng: np.random.Generator, space: DesignSpace = DesignSpace(), length: int = 3) -> Network:
    """A random profiling chain of ``length`` layers (resampled until within the FLOPs/params caps)."""
    for _ in range(1000):
        r = rng.random()
        if space.lstm and r < 0.12:
            shape = (int(rng.choice(space.seq_lens)), int(rng.choice(space.vector_sizes[:3])))
        elif r < 0.3:
            shape = (int(rng.choice(space.vector_sizes)),)
        else:
            hw = int(rng.choice(space.image_sizes))
            shape = (hw, hw, int(rng.choice(space.in_channels)))
        layers = _grow(rng, shape, [], space, length)
        batch = int(rng.choice(space.batches))  # drawn for rejected chains too: the stream stays as it was
        if layers is not None:
            net = Network(shape, tuple(layers), batch)
            if _ok(net, space):
                return net
    raise RuntimeError("sample_chain: no chain within the caps after 1000 tries; loosen DesignSpace caps")


def conv_config_chains(rng: np.random.Generator, space: DesignSpace = DesignSpace(), in_channels=(1, 3),
                       kernels=(3, 5), length: int = 3) -> list:
    """One profiling chain per first-layer conv configuration ``(cin, cout, kernel)`` over
    ``in_channels`` x ``space.conv_features`` x ``kernels`` (default: the grid :func:`sample_model`'s
    CNNs start with), the conv first on a random image size (>= 12) and batch, then ``length - 1``
    layers as :func:`sample_chain` draws them; resampled until within the caps.

    [our choice] Random design chains rarely contain a given input-layer configuration (a 3 -> 24
    channel 5x5 conv: about 1 in 200 chains), and XLA:CPU's conv time is not smooth in the channel
    counts there (measured 2026-12-07 for forward + both gradients at batch 32, 20x20: 3 -> 24 took
    1.5-2.5x the time per FLOP of 3 -> 16 and 3 -> 32, at kernel 3 and 5). With this grid in the profile every such
    configuration has samples, which the conv GP's configuration effect (``fit_thor(exact_conv=True)``)
    can use.
    """
    out = []
    sizes = [s for s in space.image_sizes if s >= 12]
    for cin in in_channels:
        for cout in space.conv_features:
            for k in kernels:
                for _ in range(1000):
                    hw = int(rng.choice(sizes))
                    shape = (hw, hw, int(cin))
                    layers = _grow(rng, shape, [Conv(int(cout), int(k), 1, "SAME" if rng.random() < 0.7 else "VALID")],
                                   space, length)
                    if layers is None:
                        continue
                    net = Network(shape, tuple(layers), int(rng.choice(space.batches)))
                    if _ok(net, space):
                        out.append(net)
                        break
                else:
                    raise RuntimeError(f"conv_config_chains: no chain for conv {cin} -> {cout}, kernel {k} "
                                       "within the caps after 1000 tries; loosen DesignSpace caps")
    return out


def pool_config_chains(rng: np.random.Generator, space: DesignSpace = DesignSpace(), min_size: int = 16) -> list:
    """One profiling chain ``Conv(c) -> ReLU -> max-pool 2`` per (channels ``c``, batch) over
    ``space.conv_features`` x ``space.batches``: the conv (SAME, kernel 3 or 5 and ``cin`` 1 or 3 drawn)
    on the largest ``hw x hw x cin`` input, ``hw >= min_size``, whose chain is within the caps.

    [our choice] The pool is third, after a layer with parameters, so its input gradient (the
    select-and-scatter of max pooling's backward) is in the subtracted cost, as in whole CNNs. That
    backward is not smooth in the input size on XLA:CPU (measured 2026-12-07, a 2x2 max-pool after a
    1x1 conv at batch 64, 28x28: 6.9 / 33.0 / 39.7 ms at 16 / 32 / 64 channels), and random design
    chains put nearly all their max-pools on inputs of at most 2.5 MB, so whole models with a pool on
    a 28x28x64 batch-64 activation (12.8 MB) were GP extrapolations. This grid spans the pool inputs
    whole models have.
    """
    out = []
    sizes = sorted((s for s in space.image_sizes if s >= min_size), reverse=True)
    if not sizes:
        raise ValueError(f"pool_config_chains: no image size >= min_size={min_size} in {space.image_sizes}")
    for c in space.conv_features:
        for batch in space.batches:
            cin, k = int(rng.choice((1, 3))), int(rng.choice((3, 5)))
            # largest image first; at each size the drawn conv, then the cheapest one (1 channel in, 3x3)
            candidates = (Network((hw, hw, ci), (Conv(int(c), kk, 1, "SAME"), Act("relu"), Pool(2, "max")), int(batch))
                          for hw in sizes for ci, kk in ((cin, k), (1, 3)))
            net = next((n for n in candidates if _ok(n, space)), None)
            if net is None:
                raise RuntimeError(f"pool_config_chains: no chain for {c} channels at batch {batch} within the "
                                   f"caps at any size >= {min_size}; loosen DesignSpace caps")
            out.append(net)
    return out


MODEL_FAMILIES = ("cnn", "mlp", "lstm")


def sample_model_chain(rng: np.random.Generator, space: DesignSpace = DesignSpace(), length: int = 3,
                       families: Sequence[str] = ("cnn", "mlp")) -> Network:
    """A profiling chain cut from a fresh random whole model: ``length`` consecutive layers of a
    :func:`sample_model` draw (family uniform over ``families``), with the model's batch and the
    input shape at the window's start.

    [our choice, an alternative to :func:`sample_chain`] THOR profiles layer configurations and
    leaves open which; windows of models from the families to be estimated put every profiled
    layer in the shape, neighbour and batch distribution it has there (random chains also cover
    strides, 1x1 kernels and channel counts these families never use). The draw is fresh: the
    held-out models come from their own stream and are never cut up.
    """
    for _ in range(1000):
        net = sample_model(rng, str(rng.choice(list(families))), space)
        if len(net.layers) < length:
            continue
        start = int(rng.integers(0, len(net.layers) - length + 1))
        shape = net.input_shape if start == 0 else place(net)[start - 1].out_shape
        chain = Network(tuple(shape), net.layers[start:start + length], net.batch)
        if _ok(chain, space):
            return chain
    raise RuntimeError("sample_model_chain: no window within the caps after 1000 tries; loosen DesignSpace caps")


def sample_model(rng: np.random.Generator, family: str, space: DesignSpace = DesignSpace(), num_classes: int = 10) -> Network:
    """A random whole classifier of ``family`` ('cnn', 'mlp' or 'lstm') ending in Dense(num_classes).

    cnn: 1-3 blocks of Conv(c, k) [BatchNorm] Act [Pool], optional Dense(h)+Act, Dense(classes);
    mlp: 1-4 Dense(h)+Act, Dense(classes); lstm: LSTM(h) [Dense(h)+Act] Dense(classes).
    """
    if family not in MODEL_FAMILIES:
        raise ValueError(f"family={family!r}: use one of {MODEL_FAMILIES}")
    for _ in range(1000):
        batch = int(rng.choice(space.batches))
        layers = []
        if family == "cnn":
            hw = int(rng.choice([s for s in space.image_sizes if s >= 12]))
            shape = (hw, hw, int(rng.choice([1, 3])))
            for _ in range(int(rng.integers(1, 4))):
                layers.append(Conv(int(rng.choice(space.conv_features)), int(rng.choice([3, 5])), 1,
                                   "SAME" if rng.random() < 0.7 else "VALID"))
                if rng.random() < 0.4:
                    layers.append(BatchNorm())
                layers.append(Act("relu"))
                if rng.random() < 0.6:
                    layers.append(Pool(2, "max"))
            if rng.random() < 0.6:
                layers += [Dense(int(rng.choice(space.dense_features))), Act("relu")]
        elif family == "mlp":
            shape = (int(rng.choice(space.vector_sizes)),)
            for _ in range(int(rng.integers(1, 5))):
                layers += [Dense(int(rng.choice(space.dense_features))), Act(str(rng.choice(["relu", "tanh"])))]
        else:
            shape = (int(rng.choice(space.seq_lens)), int(rng.choice(space.vector_sizes[:3])))
            layers.append(LSTM(int(rng.choice(space.lstm_hidden))))
            if rng.random() < 0.5:
                layers += [Dense(int(rng.choice(space.dense_features))), Act("relu")]
        layers.append(Dense(num_classes))
        net = Network(shape, tuple(layers), batch, num_classes)
        if _ok(net, space):
            return net
    raise RuntimeError(f"sample_model({family!r}): nothing within the caps after 1000 tries")
