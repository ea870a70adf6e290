"""The federated ``Algorithm`` protocol (optax's GradientTransformation shape, FedJAX's spirit).

An algorithm is a NamedTuple of five pure functions::

    init(key, data_spec)                                     -> (server_state, client_states)
    broadcast(server_state)                                  -> broadcast
    client_update(broadcast, client_state, client_data, key) -> (client_state, upload, metrics)
    server_update(server_state, uploads, weights, key)       -> server_state
    evaluate(broadcast, client_state, client_data, key)      -> metrics   (personalised, test split)

A constructor such as :func:`jaxlab.fl.algorithms.fedavg.fedavg` binds the model and the
hyperparameters (as ``optax.sgd`` binds a learning rate) and returns the record; ``init`` therefore
takes ``(key, data_spec)`` only. ``client_states`` carry a leading client axis (personal heads,
DBE's bias, BatchNorm statistics); the engine never looks inside. ``uploads`` arrive stacked over
the selected clients and ``weights`` [m] sum to one (train-set sizes over the selected clients).
``client_data`` is one client's slice of :meth:`FederatedData.arrays` (padded arrays + counts).
``evaluate`` returns :func:`jaxlab.train.metrics.classification_metrics`' dict.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Algorithm", "DataSpec", "weighted_mean", "tree_index", "tree_stack", "tree_set", "replicate",
           "data_spec_of"]


class Algorithm(NamedTuple):
    init: Callable
    broadcast: Callable
    client_update: Callable
    server_update: Callable
    evaluate: Callable
    name: str = "algorithm"


class DataSpec(NamedTuple):
    num_clients: int
    num_classes: int
    input_shape: tuple
    input_dtype: Any
    train_n_max: int
    test_n_max: int

    def dummy_input(self, batch: int = 1):
        return jnp.zeros((batch,) + tuple(self.input_shape), self.input_dtype)


def data_spec_of(data) -> DataSpec:
    return DataSpec(data.num_clients, data.num_classes, tuple(data.input_shape), data.train_x.dtype,
                    int(data.train_x.shape[1]), int(data.test_x.shape[1]))


def weighted_mean(tree, weights):
    """Weighted mean over the leading axis of every leaf; ``weights`` [m] sums to one."""
    return jax.tree_util.tree_map(lambda u: jnp.tensordot(weights.astype(u.dtype), u, axes=1), tree)


def tree_index(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def tree_stack(trees):
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)


def tree_set(tree, idx, values):
    """``tree[idx] = values`` on every leaf (functional scatter along the client axis)."""
    return jax.tree_util.tree_map(lambda a, v: a.at[idx].set(v), tree, values)


def replicate(tree, n: int):
    """Stacks ``n`` identical copies (every client starts from the same initialisation, as PFLlib's
    deep copies of one server model)."""
    return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n,) + np.shape(a)).copy() if hasattr(a, "shape")
                                  else jnp.broadcast_to(jnp.asarray(a), (n,) + np.shape(a)), tree)
