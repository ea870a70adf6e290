"""Pieces every classifier-based algorithm shares: variable init and local SGD on one client."""

from __future__ import annotations

import jax
import optax

from jaxlab.train.local import client_batches, make_local_train
from jaxlab.train.steps import classifier_loss, eval_step

__all__ = ["init_variables", "LocalSGD", "evaluate_on_test"]


def init_variables(model, key, spec):
    """``(params, model_state)``; model_state holds the non-param collections (BatchNorm stats)."""
    variables = model.init(key, spec.dummy_input(1))
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return params, model_state


class LocalSGD:
    """PFLlib's local training: plain SGD(lr), no momentum or weight decay, shuffled batches of
    ``batch_size`` with ``drop_last``, ``epochs`` passes. ``loss_fn`` defaults to cross-entropy.
    ``optimizer`` overrides SGD (e.g. FedProx's proximal term can be written as a loss instead)."""

    def __init__(self, model, lr: float, batch_size: int, epochs: int, loss_fn=None, optimizer=None):
        if lr <= 0:
            raise ValueError(f"learning rate {lr!r} must be > 0")
        if batch_size < 1 or epochs < 0:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1 and epochs={epochs!r} >= 0")
        self.model, self.batch_size, self.epochs = model, int(batch_size), int(epochs)
        self.optimizer = optimizer or optax.sgd(lr)
        self._local_train = make_local_train(loss_fn or classifier_loss(model), self.optimizer)

    def __call__(self, params, model_state, data, key, *args, epochs: int | None = None):
        """Trains on the client's train split. Returns ``(params, model_state, metrics)``."""
        k_batch, k_train = jax.random.split(key)
        e = self.epochs if epochs is None else epochs
        batches, mask = client_batches(data["train_x"], data["train_y"], data["train_n"], k_batch, self.batch_size, max(e, 1))
        if e == 0:
            mask = mask & False
        params, _, m = self._local_train(params, self.optimizer.init(params), batches, mask, k_train, *args,
                                         model_state=model_state)
        return params, m.pop("model_state"), m


def evaluate_on_test(model, params, model_state, data):
    return eval_step(model, params, model_state, data["test_x"], data["test_y"], data["test_n"])
