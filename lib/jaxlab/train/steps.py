"""Pure classifier loss/eval functions shared by every FL algorithm and experiment.

``variables`` are split as Flax does: ``params`` (trained, gradients) and ``model_state`` (the other
collections, e.g. ``{'batch_stats': ...}``; ``{}`` for models without BatchNorm).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxlab.train.metrics import classification_metrics, cross_entropy

__all__ = ["apply_model", "classifier_loss", "eval_step", "train_step"]


def apply_model(model, params, model_state, x, train: bool):
    """``(logits, new_model_state)``; BatchNorm statistics are updated only when ``train``."""
    variables = {"params": params, **model_state}
    if train and model_state:
        logits, new_state = model.apply(variables, x, train=True, mutable=list(model_state.keys()))
        return logits, dict(new_state)
    return model.apply(variables, x, train=train), model_state


def classifier_loss(model):
    """``loss_fn(params, model_state, batch, key) -> (cross-entropy, (model_state, {}))``."""

    def loss_fn(params, model_state, batch, key):
        del key
        logits, model_state = apply_model(model, params, model_state, batch["x"], train=True)
        return cross_entropy(logits, batch["y"]), (model_state, {})

    return loss_fn


def eval_step(model, params, model_state, x, y, n):
    """Test metrics of one client on its padded test arrays (see ``classification_metrics``)."""
    logits, _ = apply_model(model, params, model_state, x, train=False)
    return classification_metrics(logits, y, n)


def train_step(model, optimizer, params, model_state, opt_state, batch, key):
    """One SGD step of the plain classifier; see :func:`jaxlab.train.local.make_train_step`."""
    from jaxlab.train.local import make_train_step

    return make_train_step(classifier_loss(model), optimizer)(params, model_state, opt_state, batch, key)


def accuracy(logits, y):
    return jnp.mean(jnp.argmax(logits, -1) == y)
