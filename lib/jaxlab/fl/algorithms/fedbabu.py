"""FedBABU (Oh et al., 2022): train and share the body only; the head stays at its random init.

Clients train the base with the head frozen and upload the base. Personalisation is a fine-tune of
the head on the client's train split before testing: [our choice] ``evaluate`` fine-tunes the
head for ``finetune_epochs`` (default 1) from the global head every time it evaluates, so the
per-round accuracy is the personalised (fine-tuned) one; PFLlib fine-tunes only after the last
round.
"""

from __future__ import annotations

from jaxlab.fl.algorithm import Algorithm, replicate, weighted_mean
from jaxlab.fl.algorithms.common import LocalSGD, evaluate_on_test, init_variables
from jaxlab.fl.algorithms.fedrep import _part_loss

__all__ = ["fedbabu"]


def fedbabu(model, lr: float = 0.005, batch_size: int = 10, local_epochs: int = 1, finetune_epochs: int = 1) -> Algorithm:
    base_sgd = LocalSGD(model, lr, batch_size, local_epochs, loss_fn=_part_loss(model, "base"))
    head_sgd = LocalSGD(model, lr, batch_size, finetune_epochs, loss_fn=_part_loss(model, "head"))

    def init(key, spec):
        params, ms = init_variables(model, key, spec)
        return {"base": params["base"], "head": params["head"]}, {"model_state": replicate(ms, spec.num_clients)}

    def client_update(bc, cs, data, key):
        base, ms, m = base_sgd(bc["base"], cs["model_state"], data, key, bc["head"])
        return {"model_state": ms}, {"base": base}, m

    def server_update(server, uploads, weights, key):
        return {"base": weighted_mean(uploads, weights)["base"], "head": server["head"]}

    def evaluate(bc, cs, data, key):
        head, ms, _ = head_sgd(bc["head"], cs["model_state"], data, key, bc["base"])
        return evaluate_on_test(model, {"base": bc["base"], "head": head}, cs["model_state"], data)

    return Algorithm(init, lambda s: s, client_update, server_update, evaluate, name="fedbabu")
