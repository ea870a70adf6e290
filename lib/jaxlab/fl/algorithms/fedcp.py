"""FedCP (Zhang et al., KDD'23, arXiv 2307.01217): conditional policy over a personal and a global head.

Per-client ensemble ([FedCP-repo] clientcp/servercp, PFLlib the same):

=============  ===========  =====================================================================
phi            shared       trainable feature extractor, FedAvg'd and sent to all clients
W_hp_i         personal     trainable personal head (the model's head), never uploaded
W_hg           frozen       global head (no gradient locally)
phi_bar        frozen       copy of the global phi, used only for the MMD term
CPN Theta      shared       Dense(D, 2D) (torch init) -> LayerNorm(2D, eps 1e-5) -> ReLU ->
                            reshape [B, 2, D] -> Gumbel-softmax over the pair (tau=1, soft)
v_i            personal     context [D], starts ~U[0, 1)
=============  ===========  =====================================================================

Forward and loss::

    h      = phi(x);   v~ = v / ||v||_2 (tiled over the batch)
    r, s   = CPN(h * v~)                        # r + s = 1 elementwise ("pm", "gm")
    out    = W_hp_i(h * r) + W_hg(h * s)
    L      = CE(out, y) + lam * MMD(h, phi_bar(x))
    MMD    = mean(XX + YY - 2 XY),  K(a, b) = sum_{s in (10, 15, 20, 50)} exp(-||a - b||^2 / (2 s))

(the biased B x B estimator; the bandwidth divides by s, not s^2). SGD(lr) on phi, W_hp_i, Theta.

After local training the client mixes ``W_hg <- 0.5 W_hp_i + 0.5 W_hg`` and uploads phi, that
W_hg and Theta. The server averages all three (weights ``n_i / sum n``); phi goes to **all**
clients (trainable phi and frozen phi_bar), the averaged head and CPN only to the clients that
trained this round. On receiving the head a client first sets its context from its personal head,
``v_i = sum_c W_hp_i[c, :]`` (the row sum of torch's ``[C, D]`` weight; for several Dense layers
the product of their weights), and only then installs the new global head.

How this maps onto the engine: the server state holds a per-client "mailbox" of the head and CPN
last delivered to each client (rows of the clients that trained are overwritten by the
aggregate), so clients that sit out keep their stale copies exactly as in PFLlib, for any join
ratio. The context is computed at the end of ``client_update`` from the freshly trained personal
head, i.e. before the new global head exists, which is the same value ``set_head_g`` computes.

A property worth knowing: the cross-entropy gradient of a Dense head sums to zero over classes,
so SGD never changes a head's row sum; identically initialised personal heads therefore all keep
the initial head's row sum as context after the first delivery (the tests give heads distinct row
sums to check where the context comes from).

Evaluation samples Gumbel noise as PFLlib does in ``eval()``; it uses the ``key`` the engine
passes to ``evaluate``, so accuracy is stochastic but reproducible from the seed.

[our choice] The initial context is one U[0, 1) draw shared by all clients (PFLlib re-seeds torch
with 0 in every client's constructor, so every client draws the same vector). With BatchNorm
models, phi_bar runs in training mode and its statistics updates are discarded.

Official hyperparameters ([FedCP-repo] run_me.sh): ``lam=5``, lr 0.005, batch 10, one local epoch.
PFLlib's default ``lam=1`` is not the paper's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from jaxlab.fl.algorithm import Algorithm, replicate, tree_index, weighted_mean
from jaxlab.fl.algorithms.common import LocalSGD, init_variables
from jaxlab.fl.algorithms.dbe import classify, feature_dim, features
from jaxlab.models.layers import Dense
from jaxlab.train.metrics import classification_metrics, cross_entropy

__all__ = ["fedcp", "fedcp_loss", "fedcp_forward", "ConditionalPolicy", "mmd_rbf", "head_context", "MMD_BANDWIDTHS"]

MMD_BANDWIDTHS = (10.0, 15.0, 20.0, 50.0)


class ConditionalPolicy(nn.Module):
    """The CPN: ``(r, s)`` [B, D] each, ``r + s = 1``, from gate input ``u [B, D]`` and Gumbel noise."""

    dim: int
    tau: float = 1.0

    @nn.compact
    def __call__(self, u, key):
        a = nn.relu(nn.LayerNorm(epsilon=1e-5, name="norm")(Dense(2 * self.dim, name="dense")(u)))
        a = a.reshape(u.shape[0], 2, self.dim)
        w = jax.nn.softmax((a + jax.random.gumbel(key, a.shape, a.dtype)) / self.tau, axis=1)
        return w[:, 0], w[:, 1]


def mmd_rbf(x, y, bandwidths=MMD_BANDWIDTHS):
    """Biased MMD^2 of ``x [B, D]`` vs ``y [B, D]`` with ``K = sum_s exp(-d^2 / (2 s))``.

    Squared distances from Gram matrices (``r_i + r_j - 2 x_i.x_j``) as PFLlib computes them.
    """
    xx, yy, xy = x @ x.T, y @ y.T, x @ y.T
    rx, ry = jnp.diag(xx), jnp.diag(yy)
    dxx = rx[:, None] + rx[None, :] - 2.0 * xx
    dyy = ry[:, None] + ry[None, :] - 2.0 * yy
    dxy = rx[:, None] + ry[None, :] - 2.0 * xy
    k = lambda d: sum(jnp.exp(-0.5 * d / s) for s in bandwidths)
    return jnp.mean(k(dxx) + k(dyy) - 2.0 * k(dxy))


def head_context(head_params):
    """``v [D]``: row sum of the personal head's weight, torch layout ``[C, D]``.

    Flax kernels are ``[in, out]``; for several Dense layers (names in sorted order) the product
    ``W_1 @ W_2 @ ...`` is ``[D, C]``, the transpose of torch's ``W_L ... W_1``.
    """
    kernels = [v for path, v in sorted(jax.tree_util.tree_leaves_with_path(head_params),
                                       key=lambda pv: jax.tree_util.keystr(pv[0]))
               if getattr(path[-1], "key", None) == "kernel"]
    if not kernels:
        raise ValueError("FedCP's context needs a head with Dense 'kernel' parameters")
    w = kernels[0]
    for k in kernels[1:]:
        w = w @ k
    return lax.stop_gradient(w.sum(axis=1))


def _normalize(v):
    return v / jnp.maximum(jnp.linalg.norm(v), 1e-12)


def fedcp_forward(model, tau: float = 1.0):
    """``forward(base, head_p, head_g, cpn, ctx, model_state, x, key, train) -> (logits, h, model_state)``:
    ``W_hp(h * r) + W_hg(h * s)`` with ``(r, s) = CPN(h * ctx / ||ctx||)`` and Gumbel noise from ``key``."""

    def forward(base, head_p, head_g, cpn, ctx, ms, x, key, train):
        h, ms = features(model, base, ms, x, train=train)
        r, s = ConditionalPolicy(h.shape[1], tau).apply({"params": cpn}, h * _normalize(ctx), key)
        out = classify(model, head_p, h * r) + classify(model, head_g, h * s)
        return out, h, ms

    return forward


def fedcp_loss(model, lam: float, tau: float = 1.0, bandwidths=MMD_BANDWIDTHS):
    """``loss_fn(trainable, model_state, batch, key, head_g, base_frozen, ctx)`` with ``trainable =
    {'base', 'head', 'cpn'}``: ``CE(out, y) + lam * MMD(phi(x), phi_bar(x))`` (``key``: Gumbel noise)."""
    forward = fedcp_forward(model, tau)
    bandwidths = tuple(float(b) for b in bandwidths)

    def loss_fn(trainable, ms, batch, key, head_g, base_frozen, ctx):
        out, h, new_ms = forward(trainable["base"], trainable["head"], head_g, trainable["cpn"], ctx, ms,
                                 batch["x"], key, True)
        h_bar, _ = features(model, base_frozen, ms, batch["x"], train=True)
        loss = cross_entropy(out, batch["y"]) + lam * mmd_rbf(h, lax.stop_gradient(h_bar), bandwidths)
        return loss, (new_ms, {})

    return loss_fn


def fedcp(model, lr: float = 0.005, batch_size: int = 10, local_epochs: int = 1, lam: float = 5.0,
          tau: float = 1.0, bandwidths=MMD_BANDWIDTHS) -> Algorithm:
    """FedCP with the official ``lam=5`` (MMD weight) and Gumbel temperature ``tau=1``.

    Server state: ``{'base', 'head_g' [N, ...], 'cpn' [N, ...]}`` (per-client delivered copies).
    Client state: ``{'id', 'head', 'ctx' [D], 'model_state'}``. Upload: ``{'id', 'base', 'head_g', 'cpn'}``.
    """
    if lam < 0:
        raise ValueError(f"lam={lam!r}: the MMD weight must be >= 0 (official value 5)")
    if tau <= 0:
        raise ValueError(f"tau={tau!r}: the Gumbel-softmax temperature must be > 0 (official value 1)")
    bandwidths = tuple(float(b) for b in bandwidths)

    forward = fedcp_forward(model, tau)
    sgd = LocalSGD(model, lr, batch_size, local_epochs, loss_fn=fedcp_loss(model, lam, tau, bandwidths))

    def init(key, spec):
        # the model comes from ``key`` itself, so every method of a seed starts from FedAvg's model
        params, ms = init_variables(model, key, spec)
        k_cpn, k_ctx = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
        dim = feature_dim(model, params, ms, spec)
        cpn = ConditionalPolicy(dim, tau).init(k_cpn, jnp.zeros((1, dim), jnp.float32), k_cpn)["params"]
        n = spec.num_clients
        # head_g starts as a copy of the initial head (PFLlib deep-copies model.head)
        server = {"base": params["base"], "head_g": replicate(params["head"], n), "cpn": replicate(cpn, n)}
        ctx = jax.random.uniform(k_ctx, (dim,), jnp.float32)
        clients = {"id": jnp.arange(n, dtype=jnp.int32),
                   **replicate({"head": params["head"], "ctx": ctx, "model_state": ms}, n)}
        return server, clients

    def client_update(bc, cs, data, key):
        head_g, cpn = tree_index(bc["head_g"], cs["id"]), tree_index(bc["cpn"], cs["id"])
        trainable = {"base": bc["base"], "head": cs["head"], "cpn": cpn}
        trainable, ms, m = sgd(trainable, cs["model_state"], data, key, head_g, bc["base"], cs["ctx"])
        head_p = trainable["head"]
        upload_head = jax.tree_util.tree_map(lambda p, g: 0.5 * p + 0.5 * g, head_p, head_g)
        # the context comes from the personal head before the new global head is installed
        new_cs = {"id": cs["id"], "head": head_p, "ctx": head_context(head_p), "model_state": ms}
        upload = {"id": cs["id"], "base": trainable["base"], "head_g": upload_head, "cpn": trainable["cpn"]}
        return new_cs, upload, m

    def server_update(server, uploads, weights, key):
        del key
        agg = weighted_mean({k: uploads[k] for k in ("base", "head_g", "cpn")}, weights)
        ids = uploads["id"]
        deliver = lambda box, new: jax.tree_util.tree_map(
            lambda b, v: b.at[ids].set(jnp.broadcast_to(v, (ids.shape[0],) + v.shape)), box, new)
        return {"base": agg["base"], "head_g": deliver(server["head_g"], agg["head_g"]),
                "cpn": deliver(server["cpn"], agg["cpn"])}

    def evaluate(bc, cs, data, key):
        head_g, cpn = tree_index(bc["head_g"], cs["id"]), tree_index(bc["cpn"], cs["id"])
        logits, _, _ = forward(bc["base"], cs["head"], head_g, cpn, cs["ctx"], cs["model_state"], data["test_x"],
                               key, False)
        return classification_metrics(logits, data["test_y"], data["test_n"])

    return Algorithm(init, lambda s: s, client_update, server_update, evaluate, name="fedcp")
