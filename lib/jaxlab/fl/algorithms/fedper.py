"""FedPer (Arivazhagan et al., 2019): the base is shared and averaged, the head stays personal.

Each selected client trains base and head together starting from the broadcast base and its own
head, then uploads the base only.
"""

from __future__ import annotations

from jaxlab.fl.algorithm import Algorithm, replicate, weighted_mean
from jaxlab.fl.algorithms.common import LocalSGD, evaluate_on_test, init_variables

__all__ = ["fedper"]


def fedper(model, lr: float = 0.005, batch_size: int = 10, local_epochs: int = 1) -> Algorithm:
    sgd = LocalSGD(model, lr, batch_size, local_epochs)

    def init(key, spec):
        params, ms = init_variables(model, key, spec)
        return {"base": params["base"]}, replicate({"head": params["head"], "model_state": ms}, spec.num_clients)

    def client_update(bc, cs, data, key):
        params, ms, m = sgd({"base": bc["base"], "head": cs["head"]}, cs["model_state"], data, key)
        return {"head": params["head"], "model_state": ms}, {"base": params["base"]}, m

    def evaluate(bc, cs, data, key):
        return evaluate_on_test(model, {"base": bc["base"], "head": cs["head"]}, cs["model_state"], data)

    return Algorithm(init, lambda s: s, client_update, lambda s, u, w, k: weighted_mean(u, w), evaluate, name="fedper")
