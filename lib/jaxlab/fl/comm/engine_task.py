"""A wire task backed by the jaxlab federated engine: FedAvg's own ``client_update``.

The server and every client process build the same :func:`jaxlab.fl.algorithms.fedavg.fedavg`
record on the same partition of the embedded digits (PFLlib pipeline, ``make_federated``), so the
flat float32 vector that travels over the wire is exactly FedAvg's ``params`` (``ravel_pytree``
order). ``client_train`` runs the engine's jitted ``local_train`` (lax.scan) for one client and
returns ``new_params - global``; the server's weighted mean of those updates is FedAvg's
``server_update`` (weights = train-set sizes), applied in fixed point (see :mod:`field`).
Evaluation is the engine's ``evaluate`` summed over every client's test split.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EngineTask"]


class EngineTask:
    def __init__(self, n_clients: int, seed: int = 0, lr: float = 0.05, local_epochs: int = 1,
                 hidden: tuple = (64,), batch_size: int = 10, scheme: str = "iid"):
        import jax
        from jax.flatten_util import ravel_pytree

        from jaxlab.data.digits import load_digits
        from jaxlab.data.federated import make_federated
        from jaxlab.fl.algorithm import data_spec_of
        from jaxlab.fl.algorithms.fedavg import fedavg
        from jaxlab.models.mlp import make_mlp

        x, y = load_digits(8)
        self.data = make_federated(np.asarray(x), np.asarray(y), n_clients, scheme, seed=seed + 1, name="digits8")
        self.n_clients, self.seed = int(n_clients), int(seed)
        self.alg = fedavg(make_mlp(10, tuple(hidden)), lr=lr, batch_size=batch_size, local_epochs=local_epochs)
        server, self.client_states = self.alg.init(jax.random.PRNGKey(seed), data_spec_of(self.data))
        flat, self._unravel = ravel_pytree(server["params"])
        self._init = np.asarray(flat, np.float32)
        self.n_params = int(self._init.size)
        self._arrays = self.data.arrays()
        self._update = jax.jit(self.alg.client_update)
        self._eval = jax.jit(self.alg.evaluate)

    def _bc(self, g):
        import jax.numpy as jnp

        return {"params": self._unravel(jnp.asarray(g, jnp.float32)), "model_state": {}}

    def _client(self, c: int):
        import jax

        return (jax.tree_util.tree_map(lambda a: a[c], self.client_states),
                jax.tree_util.tree_map(lambda a: a[c], self._arrays))

    def init_vector(self) -> np.ndarray:
        return self._init.copy()

    def num_samples(self, client_id: int) -> int:
        return int(self.data.train_n[client_id])

    def client_train(self, global_vec, client_id: int, rnd: int) -> np.ndarray:
        import jax
        from jax.flatten_util import ravel_pytree

        cs, cd = self._client(client_id)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self.seed), rnd), client_id)
        _, upload, _ = self._update(self._bc(global_vec), cs, cd, key)
        new = np.asarray(ravel_pytree(upload["params"])[0], np.float32)
        return new - np.asarray(global_vec, np.float32)

    def evaluate(self, global_vec) -> dict:
        import jax

        bc = self._bc(global_vec)
        correct = count = loss = 0.0
        for c in range(self.n_clients):
            cs, cd = self._client(c)
            m = self._eval(bc, cs, cd, jax.random.PRNGKey(0))
            correct += float(m["correct"])
            count += float(m["count"])
            loss += float(m["loss_sum"])
        return {"accuracy": correct / max(count, 1.0), "loss": loss / max(count, 1.0)}
