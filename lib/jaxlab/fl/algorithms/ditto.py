"""Ditto (Li et al., 2021): a global model trained as FedAvg plus a personal model pulled toward it.

A selected client first trains its personal model for ``personal_epochs`` with the objective
``CE + mu/2 ||v - w_global||^2`` (w_global = the model just received), then trains a copy of the
global model for ``local_epochs`` and uploads it (PFLlib's order: ``ptrain`` then ``train``).
Evaluation uses the personal model. ``mu`` defaults to 0.01 [our choice].
"""

from __future__ import annotations

import jax

from jaxlab.fl.algorithm import Algorithm, replicate, weighted_mean
from jaxlab.fl.algorithms.common import LocalSGD, evaluate_on_test, init_variables
from jaxlab.fl.algorithms.fedprox import prox_loss

__all__ = ["ditto"]


def ditto(model, lr: float = 0.005, batch_size: int = 10, local_epochs: int = 1, personal_epochs: int = 1,
          mu: float = 0.01) -> Algorithm:
    global_sgd = LocalSGD(model, lr, batch_size, local_epochs)
    personal_sgd = LocalSGD(model, lr, batch_size, personal_epochs, loss_fn=prox_loss(model, mu))

    def init(key, spec):
        params, ms = init_variables(model, key, spec)
        return {"params": params}, replicate({"personal": params, "model_state": ms}, spec.num_clients)

    def client_update(bc, cs, data, key):
        k1, k2 = jax.random.split(key)
        personal, ms, _ = personal_sgd(cs["personal"], cs["model_state"], data, k1, bc["params"])
        params, ms, m = global_sgd(bc["params"], ms, data, k2)
        return {"personal": personal, "model_state": ms}, {"params": params}, m

    def evaluate(bc, cs, data, key):
        return evaluate_on_test(model, cs["personal"], cs["model_state"], data)

    return Algorithm(init, lambda s: s, client_update, lambda s, u, w, k: weighted_mean(u, w), evaluate, name="ditto")
