"""FedAvg (McMahan et al., 2017) as PFLlib runs it.

Server state: the global ``params``. Client state: ``model_state`` only, i.e. BatchNorm statistics
stay on each client and are never averaged (PFLlib aggregates ``.parameters()`` only, issue #260);
pass ``aggregate_batch_stats=True`` to average them as well. Each selected client trains the
broadcast model with local SGD and uploads its parameters; the server takes their mean weighted
by train-set size. Evaluation: the global model on each client's test split.
"""

from __future__ import annotations

import jax

from jaxlab.fl.algorithm import Algorithm, replicate, weighted_mean
from jaxlab.fl.algorithms.common import LocalSGD, evaluate_on_test, init_variables

__all__ = ["fedavg"]


def fedavg(model, lr: float = 0.005, batch_size: int = 10, local_epochs: int = 1,
           aggregate_batch_stats: bool = False) -> Algorithm:
    local = LocalSGD(model, lr, batch_size, local_epochs)

    def init(key, spec):
        params, model_state = init_variables(model, key, spec)
        server = {"params": params, "model_state": model_state if aggregate_batch_stats else {}}
        return server, {"model_state": replicate(model_state, spec.num_clients)}

    def broadcast(server):
        return server

    def client_update(bc, cs, data, key):
        ms = bc["model_state"] if aggregate_batch_stats else cs["model_state"]
        params, ms, m = local(bc["params"], ms, data, key)
        return {"model_state": ms}, {"params": params, "model_state": ms if aggregate_batch_stats else {}}, m

    def server_update(server, uploads, weights, key):
        del server, key
        return weighted_mean(uploads, weights)

    def evaluate(bc, cs, data, key):
        del key
        ms = bc["model_state"] if aggregate_batch_stats else cs["model_state"]
        return evaluate_on_test(model, bc["params"], ms, data)

    return Algorithm(init, broadcast, client_update, server_update, evaluate, name="fedavg")
