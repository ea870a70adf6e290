"""The one flatten/unflatten helper for client updates (``jax.flatten_util.ravel_pytree``).

Every robust rule and attack works on a stacked matrix ``updates [n, d]`` of flattened
pseudo-gradients ``g_i = w_t - w_i^local`` (the sign convention of this package, see
:mod:`jaxlab.fl.robust.defenses`). :func:`flattener` builds the pair of maps once per model.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__ = ["Flattener", "flattener"]


class Flattener(NamedTuple):
    flatten: Callable    # pytree -> [d] float32
    unflatten: Callable  # [d] -> pytree shaped like the template
    size: int            # d


def flattener(template) -> Flattener:
    """``Flattener`` for pytrees shaped like ``template`` (e.g. a model's ``params``)."""
    flat, unravel = ravel_pytree(template)

    def flatten(tree):
        return ravel_pytree(tree)[0]

    def unflatten(vec):
        vec = jnp.asarray(vec)
        if vec.shape != flat.shape:
            raise ValueError(f"update has shape {vec.shape} but the model has {flat.shape[0]} parameters")
        return unravel(vec)

    return Flattener(flatten, unflatten, int(flat.shape[0]))


def stacked_flatten(tree):
    """``[m, d]`` from a pytree whose leaves carry a leading axis ``m``."""
    return jax.vmap(lambda t: ravel_pytree(t)[0])(tree)
