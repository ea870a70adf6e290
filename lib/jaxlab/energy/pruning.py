"""Energy-aware structured pruning with THOR, against L1-norm pruning at equal FLOPs.

[paper: "energy-aware pruning" saving ~50% energy while preserving accuracy; the algorithm is not
described. Ours, following systems.md's proposal, is our choice throughout:]

* Prunable units: output channels of Conv layers and units of hidden Dense layers (not the
  classifier). Removing unit j deletes its filter/column and bias, and the matching input slice
  of the next parametric layer (for Conv -> [Act, Pool] -> Dense, every flattened position of
  channel j).
* Importance of a unit: the L1 norm of its weights divided by the mean L1 norm of its layer, so
  layers are comparable (Li et al., "Pruning Filters for Efficient ConvNets", 2017).
* Energy-aware greedy (:func:`energy_aware_prune`): repeatedly, for each prunable layer, consider
  removing its ``chunk`` least important units; the predicted saving is THOR's whole-model
  estimate before minus after; remove the candidate with the largest predicted saving per unit
  of removed importance; stop when the predicted cost is <= ``budget`` x the original.
* Baseline (:func:`l1_prune_to_flops`): the same fraction of least-L1 units in every prunable
  layer, the fraction chosen by bisection so that training FLOPs match the energy-aware model.

Both pruned models keep the trained weights of the surviving units and are fine-tuned.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

from jaxlab.energy.profiler import Act, Conv, Dense, Network, Pool, make_train_step, network_train_flops, place

__all__ = ["digits_cnn", "prunable_layers", "unit_importance", "apply_keep", "energy_aware_prune",
           "l1_prune_to_flops", "train_classifier", "evaluate_classifier", "PruneStep"]


def digits_cnn(batch: int = 32, width: float = 1.0, num_classes: int = 10) -> Network:
    """A PFLlib-style 4-layer CNN for 28x28 digits as a layer-spec network.

    Conv(32, 5, VALID) ReLU MaxPool(2) Conv(64, 5, VALID) ReLU MaxPool(2) Dense(512) ReLU Dense(10);
    ``width`` scales the channel/unit counts.
    """
    c1, c2, h = max(1, round(32 * width)), max(1, round(64 * width)), max(1, round(512 * width))
    return Network((28, 28, 1), (Conv(c1, 5, 1, "VALID"), Act("relu"), Pool(2), Conv(c2, 5, 1, "VALID"), Act("relu"),
                                 Pool(2), Dense(h), Act("relu"), Dense(num_classes)), batch, num_classes)


def prunable_layers(net: Network) -> list[int]:
    """Indices of Conv layers and of Dense layers that are not the last parametric layer."""
    param_idx = [i for i, s in enumerate(net.layers) if isinstance(s, (Conv, Dense))]
    return [i for i in param_idx[:-1] if isinstance(net.layers[i], (Conv, Dense))]


def _pname(net: Network, i: int) -> str:
    return f"{'conv' if isinstance(net.layers[i], Conv) else 'dense'}{i}"


def unit_importance(net: Network, params: dict) -> dict:
    """{layer index: [units] L1 norm / mean L1 of the layer} for every prunable layer."""
    out = {}
    for i in prunable_layers(net):
        k = np.asarray(params[_pname(net, i)]["kernel"])
        l1 = np.abs(k).reshape(-1, k.shape[-1]).sum(0)
        out[i] = l1 / max(l1.mean(), 1e-12)
    return out


def _with_widths(net: Network, widths: dict) -> Network:
    layers = list(net.layers)
    for i, w in widths.items():
        layers[i] = layers[i]._replace(features=int(w))
    return net._replace(layers=tuple(layers))


def apply_keep(net: Network, params: dict, keep: dict) -> tuple[Network, dict]:
    """Slices ``params`` to keep units ``keep[i]`` (sorted index arrays) of each prunable layer i.

    Returns the pruned network and parameters (numpy). The input slice of the next parametric
    layer follows; a Dense after a feature map keeps all flattened positions of kept channels.
    """
    params = {k: {kk: np.asarray(vv) for kk, vv in v.items()} for k, v in params.items()}
    placed = place(net._replace(num_classes=None))
    param_idx = [i for i, s in enumerate(net.layers) if isinstance(s, (Conv, Dense))]
    for i, kept in keep.items():
        if i not in prunable_layers(net):
            raise ValueError(f"layer {i} ({net.layers[i]}) is not prunable; prunable: {prunable_layers(net)}")
        kept = np.sort(np.asarray(kept, int))
        if kept.size < 1:
            raise ValueError(f"layer {i}: keep at least one unit")
        name = _pname(net, i)
        params[name]["kernel"] = params[name]["kernel"][..., kept]
        params[name]["bias"] = params[name]["bias"][kept]
        nxt = param_idx[param_idx.index(i) + 1]
        nname = _pname(net, nxt)
        k = params[nname]["kernel"]
        if isinstance(net.layers[nxt], Conv):
            params[nname]["kernel"] = k[:, :, kept, :]
        else:
            shape = placed[nxt].in_shape  # per-example input of the next Dense (after pools etc.)
            c = shape[-1]
            if len(shape) == 1:
                params[nname]["kernel"] = k[kept, :]
            else:
                pos = np.arange(int(np.prod(shape[:-1])))
                rows = (pos[:, None] * c + kept[None, :]).reshape(-1)  # flatten order (h, w, c)
                params[nname]["kernel"] = k[rows, :]
    pruned = _with_widths(net, {i: len(k) for i, k in keep.items()})
    place(pruned)
    return pruned, params


class PruneStep(NamedTuple):
    layer: int
    removed: int
    predicted_saving: float
    importance: float
    predicted_total: float


def energy_aware_prune(net: Network, importance: dict, predict: Callable[[Network], float], *, budget: float,
                       chunk_frac: float = 1 / 16, min_units: int = 2) -> tuple[dict, list[PruneStep]]:
    """Greedy removal by predicted saving per unit importance until predict(net) <= budget * original.

    importance: {layer: [units]} from :func:`unit_importance`; predict(net) -> cost per iteration.
    Returns ``keep`` ({layer: kept unit indices}) and the steps taken.
    """
    if not 0 < budget < 1:
        raise ValueError(f"budget={budget}: a fraction of the original predicted cost in (0, 1)")
    order = {i: list(np.argsort(imp)) for i, imp in importance.items()}  # least important first
    removed = {i: 0 for i in importance}
    orig_w = {i: len(imp) for i, imp in importance.items()}
    chunk = {i: max(1, int(round(chunk_frac * orig_w[i]))) for i in importance}
    widths = lambda rem: {i: orig_w[i] - rem[i] for i in importance}
    current = predict(net)
    target = budget * current
    steps: list[PruneStep] = []
    while current > target:
        best = None
        for i in importance:
            k = min(chunk[i], orig_w[i] - removed[i] - min_units)
            if k <= 0:
                continue
            rem = {**removed, i: removed[i] + k}
            after = predict(_with_widths(net, widths(rem)))
            imp = float(np.sum(importance[i][order[i][removed[i]:removed[i] + k]]))
            score = (current - after) / max(imp, 1e-9)
            if best is None or score > best[0]:
                best = (score, i, k, after, imp)
        if best is None:
            break  # nothing left to remove
        _, i, k, after, imp = best
        steps.append(PruneStep(i, k, current - after, imp, after))
        removed[i] += k
        current = after
    keep = {i: np.sort(np.array(order[i][removed[i]:])) for i in importance}
    return keep, steps


def l1_prune_to_flops(net: Network, importance: dict, target_flops: float) -> tuple[dict, float]:
    """Uniform-fraction L1 pruning whose training FLOPs match ``target_flops`` (bisection on the fraction)."""

    def keep_for(frac):
        return {i: np.sort(np.argsort(imp)[int(round(frac * len(imp))):]) if int(round(frac * len(imp))) < len(imp)
                else np.sort(np.argsort(imp)[-1:]) for i, imp in importance.items()}

    def flops(frac):
        return network_train_flops(_with_widths(net, {i: len(k) for i, k in keep_for(frac).items()}))

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if flops(mid) > target_flops:
            lo = mid
        else:
            hi = mid
    frac = min((lo, hi), key=lambda f: abs(flops(f) - target_flops))
    return keep_for(frac), frac


def train_classifier(net: Network, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float = 0.01, seed: int = 0,
                     params: dict | None = None) -> dict:
    """SGD-momentum training of ``net`` (softmax CE) on (x, y) for ``epochs``; returns parameters."""
    import jax.numpy as jnp

    if net.num_classes is None:
        raise ValueError("train_classifier needs a classifier Network (num_classes set)")
    variables = {"params": params} if params is not None else None
    step, state, _ = make_train_step(net, lr=lr, seed=seed, variables=variables)
    rng = np.random.default_rng(seed)
    n = (len(x) // net.batch) * net.batch
    for _ in range(epochs):
        perm = rng.permutation(len(x))[:n].reshape(-1, net.batch)
        for idx in perm:
            state, _ = step(state, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
    return {k: {kk: np.asarray(vv) for kk, vv in v.items()} for k, v in state[0].items()}


def evaluate_classifier(net: Network, params: dict, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy (fraction) of ``net`` with ``params`` on (x, y)."""
    from jaxlab.energy.profiler import SpecNet

    logits = SpecNet(net.layers).apply({"params": params}, x, train=False)
    return float(np.mean(np.argmax(np.asarray(logits), -1) == y))
