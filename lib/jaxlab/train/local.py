"""Local training as one jitted ``lax.scan`` with pad-and-mask (DESIGN.md's contract).

    local_train(params, opt_state, batches, mask, key, *args) -> (params, opt_state, metrics)

``batches`` is a pytree with a leading step axis ``[S, B, ...]``, ``mask [S]`` says which steps are
real. Clients with fewer batches run masked steps, so every client shares one compiled function.
A masked step is a ``lax.cond`` that skips the work (on a vmapped batch of clients XLA turns it
into a select, the FedJAX ``jnp.where(mask, new, old)`` form).

``client_batches`` draws the batches of one client from its padded arrays with PFLlib's train
loader semantics: a fresh shuffle each epoch, ``drop_last=True`` (a client with fewer than
``batch_size`` samples takes no step).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax import lax

__all__ = ["client_batches", "make_train_step", "make_local_train", "num_steps"]

# loss_fn(params, model_state, batch, key, *args) -> (loss, (model_state, aux_metrics))
LossFn = Callable[..., Any]


def num_steps(n_max: int, batch_size: int, epochs: int) -> int:
    """Static number of scan steps for clients padded to ``n_max`` samples."""
    return max(1, epochs * (n_max // batch_size))


def client_batches(x, y, n, key, batch_size: int, epochs: int = 1):
    """``(batches {'x': [S, B, ...], 'y': [S, B]}, mask [S])`` for one client (padded arrays).

    Step ``s`` is batch ``s % S_e`` of epoch ``s // S_e`` with ``S_e = N_max // B``; it is real
    when that batch index is below ``n // B``.
    """
    n_max = x.shape[0]
    per_epoch = max(1, n_max // batch_size)
    keys = jax.random.split(key, epochs)

    def perm(k):
        r = jax.random.uniform(k, (n_max,))
        r = jnp.where(jnp.arange(n_max) < n, r, 2.0)  # padding rows sort last
        return jnp.argsort(r)

    perms = jax.vmap(perm)(keys)  # [E, N_max]
    take = per_epoch * batch_size
    if take > n_max:  # fewer padded rows than one batch: pad indices (those steps are masked)
        perms = jnp.pad(perms, ((0, 0), (0, take - n_max)))
    idx = perms[:, :take].reshape(epochs * per_epoch, batch_size)
    batches = {"x": x[idx], "y": y[idx]}
    mask = jnp.tile(jnp.arange(per_epoch) < (n // batch_size), epochs)
    return batches, mask


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation):
    """``train_step(params, model_state, opt_state, batch, key, *args) -> (params, model_state, opt_state, loss, aux)``."""

    def train_step(params, model_state, opt_state, batch, key, *args):
        (loss, (model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, model_state, batch, key, *args)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), model_state, opt_state, loss, aux

    return train_step


def make_local_train(loss_fn: LossFn, optimizer: optax.GradientTransformation):
    """Returns the jitted ``local_train``; ``params`` may carry ``model_state`` via ``*args``-free API:

    ``local_train(params, opt_state, batches, mask, key, *args, model_state={})``
    -> ``(params, opt_state, metrics)``, with ``metrics = {'loss': mean over real steps, 'steps': int,
    'model_state': final model state}``.
    """
    step = make_train_step(loss_fn, optimizer)

    @jax.jit
    def local_train(params, opt_state, batches, mask, key, *args, model_state=None):
        model_state = {} if model_state is None else model_state
        keys = jax.random.split(key, mask.shape[0])

        def body(carry, inp):
            batch, m, k = inp

            def real(c):
                p, ms, o, _ = c
                p, ms, o, loss, _ = step(p, ms, o, batch, k, *args)
                return (p, ms, o, loss.astype(jnp.float32))

            def skip(c):
                return c[:3] + (jnp.zeros((), jnp.float32),)

            out = lax.cond(m, real, skip, carry + (jnp.zeros((), jnp.float32),))
            return out[:3], out[3]

        (params, model_state, opt_state), losses = lax.scan(body, (params, model_state, opt_state), (batches, mask, keys))
        steps = mask.sum()
        metrics = {"loss": losses.sum() / jnp.maximum(steps, 1), "steps": steps, "model_state": model_state}
        return params, opt_state, metrics

    return local_train
