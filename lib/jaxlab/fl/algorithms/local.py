"""Local: every client trains its own model and never communicates (the pFL lower baseline).

All clients start from the same initialisation (PFLlib seeds every client identically). Client
state: ``params`` and ``model_state``; uploads are empty and the server state never changes.
"""

from __future__ import annotations

from jaxlab.fl.algorithm import Algorithm, replicate
from jaxlab.fl.algorithms.common import LocalSGD, evaluate_on_test, init_variables

__all__ = ["local"]


def local(model, lr: float = 0.005, batch_size: int = 10, local_epochs: int = 1) -> Algorithm:
    sgd = LocalSGD(model, lr, batch_size, local_epochs)

    def init(key, spec):
        params, ms = init_variables(model, key, spec)
        return {}, replicate({"params": params, "model_state": ms}, spec.num_clients)

    def client_update(bc, cs, data, key):
        params, ms, m = sgd(cs["params"], cs["model_state"], data, key)
        return {"params": params, "model_state": ms}, {}, m

    def evaluate(bc, cs, data, key):
        return evaluate_on_test(model, cs["params"], cs["model_state"], data)

    return Algorithm(init, lambda s: s, client_update, lambda s, u, w, k: s, evaluate, name="local")
