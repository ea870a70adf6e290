"""Baselines for THOR: a FLOPs-linear model and NeuralPower-style per-layer polynomial regression.

* :func:`fit_flops_linear`: ``E = a * FLOPs_train + b`` by least squares over whole measured
  networks (the profiled prefix variants), ``FLOPs_train = 3 x forward FLOPs`` (systems.md's
  FLOPs baseline).
* :func:`fit_neuralpower`: NeuralPower (arXiv 1710.05420) adapted to training: one polynomial
  regression per layer kind on the layer's features (the same raw features THOR uses, which
  include FLOPs and bytes as NeuralPower's runtime model does), Lasso-regularised, degree in
  {1, 2, 3} chosen by K-fold cross-validation; whole model = overhead model + sum of layers,
  trained on the same subtraction samples as THOR [our adaptation: NeuralPower models inference
  with nvidia-smi; here it sees exactly THOR's data, so the comparison isolates the regressor].
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import numpy as np

from jaxlab.energy.profiler import LayerSample, Network, cost_terms, feature_vector, network_train_flops

__all__ = ["FlopsLinear", "fit_flops_linear", "predict_flops_linear", "NeuralPower", "fit_neuralpower",
           "predict_neuralpower"]


class FlopsLinear(NamedTuple):
    a: float  # cost per training FLOP
    b: float  # cost per iteration at zero FLOPs


def fit_flops_linear(nets: Sequence[Network], costs: Sequence[float]) -> FlopsLinear:
    """Least-squares ``cost = a * FLOPs_train + b`` over measured networks."""
    if len(nets) != len(costs) or len(nets) < 2:
        raise ValueError(f"need >= 2 networks with one cost each, got {len(nets)} nets and {len(costs)} costs")
    f = np.array([network_train_flops(n) for n in nets], np.float64)
    c = np.asarray(costs, np.float64)
    A = np.stack([f, np.ones_like(f)], 1)
    (a, b), *_ = np.linalg.lstsq(A, c, rcond=None)
    return FlopsLinear(float(a), float(b))


def predict_flops_linear(model: FlopsLinear, net: Network) -> float:
    return model.a * network_train_flops(net) + model.b


class NeuralPower(NamedTuple):
    regressors: dict  # kind -> fitted sklearn pipeline
    degrees: dict  # kind -> chosen degree
    means: dict  # kind -> mean cost (fallback for kinds with too few samples)


def _pipeline(degree: int, seed: int):
    from sklearn.linear_model import LassoCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    return make_pipeline(StandardScaler(), PolynomialFeatures(degree, include_bias=False), StandardScaler(),
                         LassoCV(cv=3, alphas=30, max_iter=20000, random_state=seed))


def fit_neuralpower(samples: Sequence[LayerSample], *, degrees: Sequence[int] = (1, 2, 3), folds: int = 4,
                    seed: int = 0) -> NeuralPower:
    """Per-kind Lasso polynomial regression of the (linear) layer cost; degree by K-fold CV (MAE)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import KFold, cross_val_score

    if not samples:
        raise ValueError("fit_neuralpower: no samples")
    by: dict = {}
    for s in samples:
        by.setdefault(s.kind, []).append(s)
    regs, degs, means = {}, {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for kind, ss in by.items():
            X = np.stack([feature_vector(kind, s.features) for s in ss])
            y = np.array([s.cost for s in ss])
            means[kind] = float(np.mean(y))
            if len(ss) < 2 * folds:
                continue
            cv = KFold(folds, shuffle=True, random_state=seed)
            scores = {d: cross_val_score(_pipeline(d, seed), X, y, cv=cv, scoring="neg_mean_absolute_error").mean()
                      for d in degrees}
            best = max(scores, key=scores.get)
            regs[kind] = _pipeline(best, seed).fit(X, y)
            degs[kind] = int(best)
    return NeuralPower(regs, degs, means)


def predict_neuralpower(model: NeuralPower, net: Network) -> float:
    """Overhead + sum of per-layer polynomial predictions (kinds with < 2*folds samples use their mean);
    plus the classifier-loss term when the fit had 'loss' samples (as THOR's :func:`thor.estimate`)."""
    terms = cost_terms(net, with_loss="loss" in model.means)
    total = 0.0
    for kind, feats in terms:
        if kind in model.regressors:
            total += float(model.regressors[kind].predict(feature_vector(kind, feats)[None])[0])
        elif kind in model.means:
            total += model.means[kind]
        else:
            raise ValueError(f"NeuralPower has no model for layer kind {kind!r}; profile chains containing it")
    return total
