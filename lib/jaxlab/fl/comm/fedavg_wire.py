"""Training callbacks for FedAvg over the wire: the server holds a flat float32 vector.

A *task* is what each node process builds from a small JSON-able dict (so a process in its own
network namespace can rebuild it): ``make_task(spec)``. It exposes

    n_params                                          int
    init_vector()                                     -> [n_params] float32 (same in every process)
    num_samples(client_id)                            -> int (FedAvg weight)
    client_train(global_vec, client_id, round)        -> update [n_params] float32 (new - global)
    evaluate(global_vec)                              -> {"accuracy", "loss"} on the held-out split

Kinds:
  ``digits_mlp``   numpy MLP 64-H-10 (ReLU, softmax cross-entropy, plain SGD) on the embedded 8x8
                   digits; H sets the update size (H=39000 gives 2.9M params = 11.7 MB), so the WAN
                   study can ship >= 10 MB updates while training stays cheap. [our choice]
  ``jaxlab_fedavg`` the jaxlab engine's model and ``local_train`` (when ``jaxlab.fl`` provides them).

Data: 80/20 stratified-by-seed train/test split of the 1797 digits; the train part is shuffled and
cut into ``n_clients`` equal IID shards (client c gets shard c). [our choice]
"""

from __future__ import annotations

import numpy as np

__all__ = ["DigitsMLP", "make_task", "digits_split"]


def digits_split(n_clients: int, seed: int):
    from jaxlab.data.digits import load_digits

    x, y = load_digits(8)
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    y = np.asarray(y, np.int64)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    n_test = len(x) // 5
    test, train = perm[:n_test], perm[n_test:]
    shards = np.array_split(train, n_clients)
    return (x[test], y[test]), [(x[s], y[s]) for s in shards]


class DigitsMLP:
    def __init__(self, n_clients: int, hidden: int = 64, lr: float = 0.05, local_epochs: int = 1,
                 batch_size: int = 32, seed: int = 0):
        if hidden < 1 or n_clients < 1:
            raise ValueError(f"DigitsMLP: hidden={hidden}, n_clients={n_clients}; both must be >= 1")
        self.n_clients, self.hidden, self.lr = n_clients, hidden, lr
        self.local_epochs, self.batch_size, self.seed = local_epochs, batch_size, seed
        self.test, self.shards = digits_split(n_clients, seed)
        self.d_in, self.d_out = 64, 10
        self.shapes = [(self.d_in, hidden), (hidden,), (hidden, self.d_out), (self.d_out,)]
        self.n_params = int(sum(np.prod(s) for s in self.shapes))

    def _unflat(self, v):
        out, o = [], 0
        for s in self.shapes:
            n = int(np.prod(s))
            out.append(v[o:o + n].reshape(s))
            o += n
        return out

    def init_vector(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 1)
        w1 = rng.normal(0, np.sqrt(2.0 / self.d_in), (self.d_in, self.hidden))
        w2 = rng.normal(0, np.sqrt(1.0 / self.hidden), (self.hidden, self.d_out))
        parts = [w1, np.zeros(self.hidden), w2, np.zeros(self.d_out)]
        return np.concatenate([p.ravel() for p in parts]).astype(np.float32)

    def num_samples(self, client_id: int) -> int:
        return int(len(self.shards[client_id][1]))

    def _forward(self, params, x):
        w1, b1, w2, b2 = params
        h = np.maximum(x @ w1 + b1, 0.0)
        logits = h @ w2 + b2
        logits = logits - logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        return h, p

    def client_train(self, global_vec, client_id: int, rnd: int) -> np.ndarray:
        v = np.array(global_vec, dtype=np.float32)
        w1, b1, w2, b2 = self._unflat(v)  # views into v: updated in place
        x, y = self.shards[client_id]
        rng = np.random.default_rng([self.seed, client_id, rnd])
        for _ in range(self.local_epochs):
            order = rng.permutation(len(x))
            for s in range(0, len(x), self.batch_size):
                idx = order[s:s + self.batch_size]
                xb, yb = x[idx], y[idx]
                h, p = self._forward((w1, b1, w2, b2), xb)
                g = p.copy()
                g[np.arange(len(yb)), yb] -= 1.0
                g /= len(yb)
                gw2 = h.T @ g
                gb2 = g.sum(0)
                gh = (g @ w2.T) * (h > 0)
                gw1 = xb.T @ gh
                gb1 = gh.sum(0)
                w1 -= self.lr * gw1
                b1 -= self.lr * gb1
                w2 -= self.lr * gw2
                b2 -= self.lr * gb2
        return (v - np.asarray(global_vec, np.float32)).astype(np.float32)

    def evaluate(self, global_vec) -> dict:
        x, y = self.test
        _, p = self._forward(self._unflat(np.asarray(global_vec, np.float32)), x)
        loss = float(-np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))
        return {"accuracy": float(np.mean(p.argmax(1) == y)), "loss": loss}


def make_task(spec: dict):
    """Builds a task from a JSON-able spec ``{"kind": ..., "n_clients": ..., ...}``."""
    spec = dict(spec)
    kind = spec.pop("kind", "digits_mlp")
    if kind == "digits_mlp":
        return DigitsMLP(**spec)
    if kind == "jaxlab_fedavg":
        from jaxlab.fl.comm import engine_task  # imported lazily: pulls in JAX

        return engine_task.EngineTask(**spec)
    raise ValueError(f"task kind {kind!r} unknown; use 'digits_mlp' or 'jaxlab_fedavg'")
