"""FedRep (Collins et al., 2021): alternate head and representation updates.

A selected client first trains its personal head for ``head_epochs`` with the broadcast base frozen,
then trains the base for ``local_epochs`` with the new head frozen, and uploads the base
(PFLlib's ``clientrep``: ``plocal_epochs`` head epochs, default 1).
"""

from __future__ import annotations

from jaxlab.fl.algorithm import Algorithm, replicate, weighted_mean
from jaxlab.fl.algorithms.common import LocalSGD, evaluate_on_test, init_variables
from jaxlab.train.metrics import cross_entropy
from jaxlab.train.steps import apply_model

__all__ = ["fedrep"]


def _part_loss(model, trainable: str):
    frozen = "base" if trainable == "head" else "head"

    def loss_fn(part, ms, batch, key, other):
        params = {trainable: part, frozen: other}
        logits, ms = apply_model(model, params, ms, batch["x"], train=True)
        return cross_entropy(logits, batch["y"]), (ms, {})

    return loss_fn


def fedrep(model, lr: float = 0.005, batch_size: int = 10, local_epochs: int = 1, head_epochs: int = 1) -> Algorithm:
    head_sgd = LocalSGD(model, lr, batch_size, head_epochs, loss_fn=_part_loss(model, "head"))
    base_sgd = LocalSGD(model, lr, batch_size, local_epochs, loss_fn=_part_loss(model, "base"))

    def init(key, spec):
        params, ms = init_variables(model, key, spec)
        return {"base": params["base"]}, replicate({"head": params["head"], "model_state": ms}, spec.num_clients)

    def client_update(bc, cs, data, key):
        import jax

        k1, k2 = jax.random.split(key)
        head, ms, _ = head_sgd(cs["head"], cs["model_state"], data, k1, bc["base"])
        base, ms, m = base_sgd(bc["base"], ms, data, k2, head)
        return {"head": head, "model_state": ms}, {"base": base}, m

    def evaluate(bc, cs, data, key):
        return evaluate_on_test(model, {"base": bc["base"], "head": cs["head"]}, cs["model_state"], data)

    return Algorithm(init, lambda s: s, client_update, lambda s, u, w, k: weighted_mean(u, w), evaluate, name="fedrep")
