"""GPFL (Zhang et al., ICCV'23, arXiv 2308.10279): global and personalised feature learning.

Modules ([GPFL-repo] clientgp/servergp, PFLlib clientgpfl/servergpfl):

====================  ========  ==========================================================
phi (base)            shared    the model's feature extractor, FedAvg'd
psi_i (head)          personal  the model's head, never uploaded
CoV (Conditional      shared    ``gamma``, ``beta``: each Dense(D, D) -> ReLU -> LayerNorm(D)
Valve)                          (torch init, eps 1e-5); applied to the *conditional vector only*
GCE                   shared    embedding table ``[U, D]`` ~ N(0, 1) (``nn.Embedding``)
C_hat                 --        frozen copy of the global GCE taken when it arrives
====================  ========  ==========================================================

Forward and loss per batch (``cov(f, c) = ReLU(f * (gamma(c) + 1) + beta(c))``)::

    f     = phi(x)
    f_P   = cov(f, p_i);  logits = psi_i(f_P)
    f_G   = cov(f, g)
    L_alg = mean_b -log softmax_u(cos(f_G[b], GCE[u]))[y_b]     # no temperature or scale
    L_mlg = || f_G - C_hat[y] ||_2                                # Frobenius over the B x D tensor,
                                                                  # not squared, not batch-averaged
    L     = CE(logits, y) + L_alg + lam * L_mlg

One backward; SGD(lr) on (phi, psi_i) and SGD(lr, weight_decay=mu) on GCE and CoV only
(decoupled as torch does it: ``grad += mu * w`` before the step).

Conditional inputs: ``g = (1/U) sum_u C_u`` and ``p_i = sum_u alpha_{i,u} C_u`` with ``alpha_i`` the
client's train-label frequency. Both are **zero before the first aggregation**, and at the end of
every round (``set_GCE`` on all clients) they are recomputed from the client's *own current* GCE
*before* it is overwritten by the global one: a client that trained this round uses its trained
GCE, a client that did not uses the global GCE it already held. Here the server keeps the previous
global GCE and which clients trained last round, so ``evaluate``/``client_update`` rebuild exactly
PFLlib's (g, p_i) for any join ratio (client state keeps the (g, p_i) of its own trained GCE).

Round order: evaluate all -> train selected -> average phi, GCE, CoV (weights ``n_i / sum n``) and
send all three to every client (the next broadcast). psi_i stays local.

[our choice] ``alpha_i`` counts the labels of the first ``floor(n_i / B) * B`` train samples in
stored order (the drop_last loader of the official repo, ``shuffle=False``; PFLlib's shuffled
loader counts a random subset of that size).

Official hyperparameters ([GPFL-repo] run_me.sh): 4-layer CNN / MLP: ``lam=0.01, mu=0.1``;
ResNet-18 / fastText: ``lam=1e-4, mu=0`` (:data:`OFFICIAL_HPARAMS`); lr 0.005 for the CNN.
PFLlib's defaults (``lam=1, mu=0``) are not the paper's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from jaxlab.fl.algorithm import Algorithm, replicate, weighted_mean
from jaxlab.fl.algorithms.common import LocalSGD, init_variables
from jaxlab.fl.algorithms.dbe import classify, feature_dim, features
from jaxlab.models.layers import Dense
from jaxlab.train.metrics import classification_metrics, cross_entropy

__all__ = ["gpfl", "gpfl_loss", "ConditionalValve", "angle_level_loss", "magnitude_level_loss", "label_frequency",
           "OFFICIAL_HPARAMS", "official_hparams"]

# backbone -> (lam, mu) from [GPFL-repo] system/run_me.sh and the maintainer in GPFL issue #6
OFFICIAL_HPARAMS = {"cnn": (0.01, 0.1), "mlp": (0.01, 0.1), "resnet18": (1e-4, 0.0), "fasttext": (1e-4, 0.0),
                    "harcnn": (0.01, 1.0)}


def official_hparams(backbone: str) -> dict:
    """``{'lam': ..., 'mu': ...}`` published for ``backbone`` (cnn, mlp, resnet18, fasttext, harcnn)."""
    if backbone not in OFFICIAL_HPARAMS:
        raise ValueError(f"no published GPFL hyperparameters for backbone {backbone!r}: "
                         f"choose one of {sorted(OFFICIAL_HPARAMS)} or pass lam=, mu= explicitly")
    lam, mu = OFFICIAL_HPARAMS[backbone]
    return {"lam": lam, "mu": mu}


class _Branch(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, c):
        return nn.LayerNorm(epsilon=1e-5, name="norm")(nn.relu(Dense(self.dim, name="dense")(c)))


class ConditionalValve(nn.Module):
    """GPFL's CoV: ``gamma(c)``, ``beta(c)`` from a conditional vector ``c [D]`` only."""

    dim: int

    @nn.compact
    def __call__(self, c):
        return _Branch(self.dim, name="gamma")(c), _Branch(self.dim, name="beta")(c)


def _valve(cov_module, cov_params, f, c):
    """``ReLU(f * (gamma(c) + 1) + beta(c))`` for ``f [B, D]`` and one conditional vector ``c [D]``."""
    gamma, beta = cov_module.apply({"params": cov_params}, c)
    return nn.relu(f * (gamma + 1.0) + beta)


def _normalize(v):
    """``v / max(||v||_2, 1e-12)`` row-wise (torch ``F.normalize``)."""
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def angle_level_loss(f_g, gce, y):
    """``mean_b -log softmax_u(cos(f_g[b], gce[u]))[y_b]`` (unscaled cosine logits)."""
    return cross_entropy(_normalize(f_g) @ _normalize(gce).T, y)


def magnitude_level_loss(f_g, gce_frozen, y):
    """``||f_g - gce_frozen[y]||_F`` over the whole ``[B, D]`` tensor (gradient 0 at 0, as torch)."""
    s = jnp.sum((f_g - gce_frozen[y]) ** 2)
    pos = s > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)


def label_frequency(y, n, num_classes: int, batch_size: int):
    """``alpha [U]``: label frequencies over the first ``floor(n / B) * B`` samples (drop_last)."""
    used = (n // batch_size) * batch_size
    valid = jnp.arange(y.shape[0]) < used
    counts = jnp.zeros((num_classes,), jnp.float32).at[y].add(valid.astype(jnp.float32))
    return counts / jnp.maximum(counts.sum(), 1.0)


def gpfl_loss(model, lam: float):
    """``loss_fn(trainable, model_state, batch, key, g [D], p [D], gce_frozen [U, D])`` with
    ``trainable = {'base', 'head', 'gce', 'cov'}``: ``CE(psi(f_P)) + L_alg + lam * L_mlg``."""

    def loss_fn(trainable, ms, batch, key, g, p, gce_frozen):
        del key
        cov = ConditionalValve(g.shape[0])
        f, ms = features(model, trainable["base"], ms, batch["x"], train=True)
        f_p = _valve(cov, trainable["cov"], f, p)
        f_g = _valve(cov, trainable["cov"], f, g)
        y = batch["y"]
        loss = (cross_entropy(classify(model, trainable["head"], f_p), y)
                + angle_level_loss(f_g, trainable["gce"], y)
                + lam * magnitude_level_loss(f_g, gce_frozen, y))
        return loss, (ms, {})

    return loss_fn


def gpfl(model, lr: float = 0.005, batch_size: int = 10, local_epochs: int = 1, lam: float = 0.01,
         mu: float = 0.1) -> Algorithm:
    """GPFL with the 4-layer-CNN defaults ``lam=0.01, mu=0.1`` (use :func:`official_hparams` for others).

    Server state: ``{'base', 'cov', 'gce' [U, D], 'gce_prev' [U, D], 'aggregated' bool,
    'selected_last' [N] bool}``. Client state: ``{'id', 'head', 'g' [D], 'p' [D], 'model_state'}``.
    Upload: ``{'id', 'base', 'gce', 'cov'}``.
    """
    if lam < 0 or mu < 0:
        raise ValueError(f"lam={lam!r} and mu={mu!r} must be >= 0 (official CNN values: lam=0.01, mu=0.1)")

    make_cov = ConditionalValve
    loss_fn = gpfl_loss(model, lam)
    decay_mask = {"base": False, "head": False, "gce": True, "cov": True}
    optimizer = optax.chain(optax.masked(optax.add_decayed_weights(mu), lambda t: {k: jax.tree_util.tree_map(
        lambda _: decay_mask[k], v) for k, v in t.items()}), optax.sgd(lr))
    sgd = LocalSGD(model, lr, batch_size, local_epochs, loss_fn=loss_fn, optimizer=optimizer)

    def init(key, spec):
        # the model comes from ``key`` itself, so every method of a seed starts from FedAvg's model
        params, ms = init_variables(model, key, spec)
        k_cov, k_gce = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
        dim = feature_dim(model, params, ms, spec)
        cov = make_cov(dim).init(k_cov, jnp.zeros((dim,), jnp.float32))["params"]
        gce = jax.random.normal(k_gce, (spec.num_classes, dim), jnp.float32)
        n = spec.num_clients
        server = {"base": params["base"], "cov": cov, "gce": gce, "gce_prev": gce,
                  "aggregated": jnp.zeros((), bool), "selected_last": jnp.zeros((n,), bool)}
        clients = {"id": jnp.arange(n, dtype=jnp.int32),
                   **replicate({"head": params["head"], "model_state": ms,
                                "g": jnp.zeros((dim,), jnp.float32), "p": jnp.zeros((dim,), jnp.float32)}, n)}
        return server, clients

    def conditional_inputs(bc, cs, data):
        """PFLlib's (g, p_i) as set at the end of the previous round (zeros before aggregation)."""
        alpha = label_frequency(data["train_y"], data["train_n"], bc["gce"].shape[0], batch_size)
        trained_last = bc["selected_last"][cs["id"]]
        g = jnp.where(trained_last, cs["g"], bc["gce_prev"].mean(0))
        p = jnp.where(trained_last, cs["p"], alpha @ bc["gce_prev"])
        zero = jnp.zeros_like(g)
        return jnp.where(bc["aggregated"], g, zero), jnp.where(bc["aggregated"], p, zero), alpha

    def client_update(bc, cs, data, key):
        g, p, alpha = conditional_inputs(bc, cs, data)
        trainable = {"base": bc["base"], "head": cs["head"], "gce": bc["gce"], "cov": bc["cov"]}
        trainable, ms, m = sgd(trainable, cs["model_state"], data, key, g, p, bc["gce"])
        gce = trainable["gce"]  # set_GCE reads the client's own trained GCE before the overwrite
        new_cs = {"id": cs["id"], "head": trainable["head"], "model_state": ms, "g": gce.mean(0), "p": alpha @ gce}
        upload = {"id": cs["id"], "base": trainable["base"], "gce": gce, "cov": trainable["cov"]}
        return new_cs, upload, m

    def server_update(server, uploads, weights, key):
        del key
        shared = weighted_mean({k: uploads[k] for k in ("base", "gce", "cov")}, weights)
        return {**shared, "gce_prev": server["gce"], "aggregated": jnp.ones((), bool),
                "selected_last": jnp.zeros_like(server["selected_last"]).at[uploads["id"]].set(True)}

    def evaluate(bc, cs, data, key):
        del key
        g, p, _ = conditional_inputs(bc, cs, data)
        f, _ = features(model, bc["base"], cs["model_state"], data["test_x"], train=False)
        logits = classify(model, cs["head"], _valve(make_cov(p.shape[0]), bc["cov"], f, p))
        return classification_metrics(logits, data["test_y"], data["test_n"])

    return Algorithm(init, lambda s: s, client_update, server_update, evaluate, name="gpfl")
