"""FedProx (Li et al., 2020): FedAvg whose local objective adds ``mu/2 * ||w - w_global||^2``.

PFLlib implements the same term as a perturbed gradient ``g + mu (w - w_global)``; the two are
identical for SGD. ``mu`` defaults to 0.01 [our choice; PFLlib's CLI default 0 would make it FedAvg].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlab.fl.algorithm import Algorithm, replicate, weighted_mean
from jaxlab.fl.algorithms.common import LocalSGD, evaluate_on_test, init_variables
from jaxlab.train.metrics import cross_entropy
from jaxlab.train.steps import apply_model

__all__ = ["fedprox", "proximal_term"]


def proximal_term(params, anchor):
    """``0.5 * ||params - anchor||^2`` over every leaf."""
    sq = jax.tree_util.tree_map(lambda a, b: jnp.sum((a - b) ** 2), params, anchor)
    return 0.5 * sum(jax.tree_util.tree_leaves(sq))


def prox_loss(model, mu):
    def loss_fn(params, ms, batch, key, anchor):
        logits, ms = apply_model(model, params, ms, batch["x"], train=True)
        return cross_entropy(logits, batch["y"]) + mu * proximal_term(params, anchor), (ms, {})

    return loss_fn


def fedprox(model, lr: float = 0.005, batch_size: int = 10, local_epochs: int = 1, mu: float = 0.01) -> Algorithm:
    sgd = LocalSGD(model, lr, batch_size, local_epochs, loss_fn=prox_loss(model, mu))

    def init(key, spec):
        params, ms = init_variables(model, key, spec)
        return {"params": params}, {"model_state": replicate(ms, spec.num_clients)}

    def client_update(bc, cs, data, key):
        params, ms, m = sgd(bc["params"], cs["model_state"], data, key, bc["params"])
        return {"model_state": ms}, {"params": params}, m

    def evaluate(bc, cs, data, key):
        return evaluate_on_test(model, bc["params"], cs["model_state"], data)

    return Algorithm(init, lambda s: s, client_update, lambda s, u, w, k: weighted_mean(u, w), evaluate, name="fedprox")
