"""FedDBE = FedAvg + DBE, domain bias elimination (Zhang et al., NeurIPS'23, arXiv 2311.14975).

What is shared and what is personal (PFLlib ``clientdbe``/``serverdbe``, the official repo is the
same code):

- base phi and head h are **shared**: the whole model is FedAvg'd (weights ``n_i / sum n_j``);
- every client owns a personalised representation bias, the PRBM ``z_p [D]`` (zeros at start,
  trained by plain SGD(lr) together with the model, **never uploaded**). It is the only personal
  state (plus BatchNorm statistics, which PFLlib never averages);
- a global mean ``z_g [D]`` is computed **once** before round 0 and then frozen.

Local step (momentum ``m``, weight ``kappa``; the running mean ``mu`` restarts at 0 every round)::

    z   = phi(x)                                      # [B, D]
    mu  = (1 - m) * stopgrad(mu) + m * mean_b(z)      # gradient only through this batch's mean
    L   = CE(h(z + z_p), y) + kappa * mean_d(0.5 * (mu - z_g)^2)

Personalised inference: ``h(phi(x) + z_p)`` with the phi, h just broadcast.

Warm-up ([our choice] of where it runs, documented): PFLlib computes ``z_g`` in the server's
constructor: every client trains ``local_epochs`` epochs from the initial model with plain CE
(``h(phi(x))``, no PRBM, no MR term) and ``z_g = sum_i (n_i / sum n) mu_i`` over **all** clients;
the trained weights are then discarded (round 0 broadcasts the initial model). An ``Algorithm``'s
``init(key, data_spec)`` sees no data, so the constructor binds the clients' train arrays
(``warmup_data=``) and ``init`` runs that warm-up functionally (one jitted ``lax.map`` over all
clients, keys ``fold_in(key, client)``). It is therefore pure, identical under every executor, and a
resumed run recomputes the same ``z_g`` (and then restores the checkpoint anyway). BatchNorm
statistics produced by the warm-up are kept as each client's starting statistics, as in PFLlib
(``set_parameters`` copies parameters only).

Official hyperparameters ([DBE-repo] run_me.sh): ``kappa=50`` (``-klw``), ``momentum=1`` (``-mo``),
lr 0.005, batch 10, one local epoch. PFLlib's defaults (``klw=0``, ``mo=0.1``) switch MR off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxlab.fl.algorithm import Algorithm, replicate, weighted_mean
from jaxlab.fl.algorithms.common import LocalSGD, init_variables
from jaxlab.train.metrics import classification_metrics, cross_entropy

__all__ = ["dbe", "dbe_loss", "warmup_global_mean", "features", "classify", "feature_dim"]


# -- base/head halves of a jaxlab Classifier (shared by dbe, gpfl and fedcp) ------------------------
def features(model, base_params, model_state, x, train: bool):
    """``(z [B, D], model_state)``: the base alone. BatchNorm statistics update only when ``train``."""
    variables = {"params": {"base": base_params}, **model_state}
    if train and model_state:
        z, new = model.apply(variables, x, train=True, method="features", mutable=list(model_state.keys()))
        return z, {**model_state, **dict(new)}
    return model.apply(variables, x, train=train, method="features"), model_state


def classify(model, head_params, z):
    """``logits [B, C]`` of the head alone on features ``z [B, D]``."""
    return model.apply({"params": {"head": head_params}}, z, method="classify")


def feature_dim(model, params, model_state, spec) -> int:
    """D, the width of ``model.base``'s output (traced abstractly, no compute)."""
    shape = jax.eval_shape(lambda p, ms: features(model, p, ms, spec.dummy_input(2), False)[0],
                           params["base"], model_state)
    if len(shape.shape) != 2:
        raise ValueError(f"the model's base must output [batch, D] features, got shape {shape.shape}")
    return int(shape.shape[1])


def _as_arrays(data):
    if data is None:
        raise ValueError("dbe needs warmup_data=<FederatedData or its .arrays()>: the global mean z_g comes from "
                         "PFLlib's one-epoch warm-up on all clients' train sets before round 0")
    if hasattr(data, "arrays"):
        data = data.arrays()
    missing = {"train_x", "train_y", "train_n"} - set(data)
    if missing:
        raise ValueError(f"warmup_data lacks {sorted(missing)}: pass a FederatedData or its .arrays() dict")
    return {k: jnp.asarray(data[k]) for k in ("train_x", "train_y", "train_n")}


def dbe_loss(model, kappa: float, momentum: float, with_dbe: bool = True):
    """``loss_fn(trainable, state, batch, key, global_mean)``; ``trainable = {'params', 'prbm'}``,
    ``state = {'model': model_state, 'mu': running mean [D]}`` (carried through the scan, no grad)."""

    def loss_fn(trainable, state, batch, key, global_mean):
        del key
        params = trainable["params"]
        z, ms = features(model, params["base"], state["model"], batch["x"], train=True)
        mu = (1.0 - momentum) * lax.stop_gradient(state["mu"]) + momentum * z.mean(0)
        if with_dbe:
            logits = classify(model, params["head"], z + trainable["prbm"])
            loss = cross_entropy(logits, batch["y"]) + kappa * jnp.mean(0.5 * (mu - global_mean) ** 2)
        else:  # PFLlib's warm-up: global_mean is None -> plain CE on h(phi(x)), the PRBM gets no gradient
            loss = cross_entropy(classify(model, params["head"], z), batch["y"])
        return loss, ({"model": ms, "mu": lax.stop_gradient(mu)}, {})

    return loss_fn


def warmup_global_mean(warm_sgd: LocalSGD, params, model_state, arrays, key, dim: int):
    """PFLlib's initialisation period: every client trains from ``params`` with plain CE and
    records its running mean; returns ``(z_g [D], per-client model_state)``.

    ``z_g = sum_i (n_i / sum n) mu_i`` over all clients (``n_i`` = train-set size); a client with
    fewer than ``batch_size`` samples takes no step and contributes ``mu_i = 0`` as in PFLlib.
    """
    n = arrays["train_n"]

    def one(args):
        i, d = args
        state = {"model": model_state, "mu": jnp.zeros((dim,), jnp.float32)}
        trainable = {"params": params, "prbm": jnp.zeros((dim,), jnp.float32)}
        _, state, _ = warm_sgd(trainable, state, d, jax.random.fold_in(key, i), jnp.zeros((dim,), jnp.float32))
        return state["mu"], state["model"]

    ids = jnp.arange(n.shape[0])
    mus, states = lax.map(one, (ids, arrays))
    w = n.astype(jnp.float32) / jnp.maximum(n.sum().astype(jnp.float32), 1.0)
    return jnp.tensordot(w, mus, axes=1), states


def dbe(model, lr: float = 0.005, batch_size: int = 10, local_epochs: int = 1, kappa: float = 50.0,
        momentum: float = 1.0, warmup_data=None) -> Algorithm:
    """FedAvg + DBE. ``kappa`` weighs the mean-regularisation (MR) term, ``momentum`` is the running
    mean's momentum (1 = this batch's mean). ``warmup_data`` (FederatedData or its ``.arrays()``)
    feeds the warm-up that fixes the global mean; see the module docstring.

    Server state: ``{'params', 'global_mean' [D]}``. Client state: ``{'prbm' [D], 'model_state'}``.
    Upload: ``{'params'}`` only (the PRBM never leaves the client).
    """
    if kappa < 0:
        raise ValueError(f"kappa={kappa!r}: the MR weight must be >= 0 (official value 50)")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum={momentum!r}: must be in [0, 1] (official value 1)")
    arrays = _as_arrays(warmup_data)
    sgd = LocalSGD(model, lr, batch_size, local_epochs, loss_fn=dbe_loss(model, kappa, momentum, True))
    warm_sgd = LocalSGD(model, lr, batch_size, local_epochs, loss_fn=dbe_loss(model, kappa, momentum, False))

    def init(key, spec):
        # the model comes from ``key`` itself, so every method of a seed starts from FedAvg's model
        params, ms = init_variables(model, key, spec)
        k_warm = jax.random.fold_in(key, 1)
        n_clients = int(arrays["train_n"].shape[0])
        if n_clients != spec.num_clients:
            raise ValueError(f"warmup_data has {n_clients} clients but the simulation has {spec.num_clients}: "
                             "pass the same FederatedData to dbe(warmup_data=...) and to Simulation")
        dim = feature_dim(model, params, ms, spec)
        global_mean, client_ms = jax.jit(warmup_global_mean, static_argnums=(0, 5))(
            warm_sgd, params, ms, arrays, k_warm, dim)
        server = {"params": params, "global_mean": global_mean}
        clients = {"prbm": jnp.zeros((spec.num_clients, dim), jnp.float32), "model_state": client_ms}
        return server, clients

    def broadcast(server):
        return server

    def client_update(bc, cs, data, key):
        dim = bc["global_mean"].shape[0]
        state = {"model": cs["model_state"], "mu": jnp.zeros((dim,), jnp.float32)}  # mu resets every round
        trainable, state, m = sgd({"params": bc["params"], "prbm": cs["prbm"]}, state, data, key, bc["global_mean"])
        return ({"prbm": trainable["prbm"], "model_state": state["model"]}, {"params": trainable["params"]}, m)

    def server_update(server, uploads, weights, key):
        del key
        return {"params": weighted_mean(uploads["params"], weights), "global_mean": server["global_mean"]}

    def evaluate(bc, cs, data, key):
        del key
        z, _ = features(model, bc["params"]["base"], cs["model_state"], data["test_x"], train=False)
        logits = classify(model, bc["params"]["head"], z + cs["prbm"])
        return classification_metrics(logits, data["test_y"], data["test_n"])

    return Algorithm(init, broadcast, client_update, server_update, evaluate, name="dbe")
