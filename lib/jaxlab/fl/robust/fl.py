"""Robust FedAvg: FedAvg whose server applies an attack, then a robust aggregation rule.

``robust_fedavg(model, defense=..., attack=..., malicious=...)`` returns an
:class:`jaxlab.fl.algorithm.Algorithm` that runs in :class:`jaxlab.fl.engine.Simulation`.

* Client state: ``{'malicious': bool, 'id': int32}`` set at ``init`` (``malicious [N]`` is
  given); the upload echoes both so that ``server_update`` (which receives no client ids) knows
  which rows of the stacked uploads the attackers own. A data attack (label flip, backdoor)
  poisons the malicious clients' training batches inside ``client_update``.
* Upload: ``{'update': g [d], 'malicious', 'id'}`` with the pseudo-gradient
  ``g = flatten(w_t) - flatten(w_local)`` (sign convention of :mod:`jaxlab.fl.robust.defenses`).
* ``server_update``: (i) the server trains its own update ``g_0`` on the root set when the
  defense (FLTrust, SkyMask) needs it; (ii) the attack rewrites the malicious rows;
  (iii) the defense aggregates; (iv) ``w <- w - server_lr * agg``. The server state also holds
  the rule's state (centered clipping's momentum, FoolsGold's history) and the round's detection
  counts ``det = {tp, fp, fn, tn}`` (flagged = not kept by the rule; positive = malicious); for
  the coordinate-wise rules (median, trimmed mean), which flag nobody, ``coord = {mal, ben}``: the
  round's per-coordinate kept shares (:func:`jaxlab.fl.robust.defenses.coordinate_kept_share`)
  summed over attackers and over honest clients (NaN for the other rules, and unless
  ``coordinate_diagnostic=True``).
* BatchNorm statistics are not part of the update vector and stay with each client
  [our choice, spec pitfall 2; the default models have no BatchNorm].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.fl.algorithm import Algorithm
from jaxlab.fl.algorithms.common import LocalSGD, evaluate_on_test, init_variables
from jaxlab.fl.robust.attacks import Attack, add_trigger, make_attack
from jaxlab.fl.robust.defenses import Aggregator, coordinate_kept_share, coordinate_window
from jaxlab.fl.robust.flat import flattener

__all__ = ["robust_fedavg", "root_data", "backdoor_success", "detection_rates", "simulate"]


def root_data(x, y):
    """The server's root set in a client's padded-array format (``train_x/train_y/train_n``)."""
    x, y = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    return {"train_x": x, "train_y": y, "train_n": jnp.asarray(x.shape[0], jnp.int32)}


def detection_rates(det) -> dict:
    """FPR = benign flagged / benign, FNR = malicious kept / malicious (NaN when undefined)."""
    tp, fp, fn, tn = (float(np.asarray(det[k]).sum()) for k in ("tp", "fp", "fn", "tn"))
    return {"fpr": fp / (fp + tn) if fp + tn > 0 else float("nan"),
            "fnr": fn / (fn + tp) if fn + tp > 0 else float("nan")}


def robust_fedavg(model, *, defense: Aggregator, malicious, attack: Attack | None = None, lr: float = 0.05,
                  batch_size: int = 10, local_epochs: int = 1, server_lr: float = 1.0, root=None,
                  name: str | None = None, coordinate_diagnostic: bool = False) -> Algorithm:
    """FedAvg with ``attack`` (an :class:`Attack` or a Pill-wrapped one) and ``defense``.

    ``malicious [N]`` bool marks the attackers among all N clients; ``root`` is
    :func:`root_data` (needed by FLTrust, SkyMask and Pill's server-free variants).
    ``coordinate_diagnostic``: for the median and trimmed mean, record the per-coordinate kept
    shares in ``server['coord']`` (off by default: its two argsorts cost 0.17 s per round at
    n=10, d=1.2e5 and 23 s at n=100, d=1e6, against 0.001 / 0.11 s for the trimmed mean itself)."""
    malicious = np.asarray(malicious, bool)
    attack = attack or make_attack("none")
    local = LocalSGD(model, lr, batch_size, local_epochs)
    if defense.needs_root and root is None:
        raise ValueError(f"defense {defense.name!r} needs the server's root set: pass root=root_data(x, y)")

    def init(key, spec):
        if malicious.shape != (spec.num_clients,):
            raise ValueError(f"malicious has shape {malicious.shape} but there are {spec.num_clients} clients")
        params, model_state = init_variables(model, key, spec)
        fl = flattener(params)
        server = {"params": params, "model_state": model_state, "agg_state": defense.init(spec.num_clients, fl.size),
                  "det": {k: jnp.zeros((), jnp.int32) for k in ("tp", "fp", "fn", "tn")},
                  "coord": {k: jnp.zeros((), jnp.float32) for k in ("mal", "ben")}}
        clients = {"malicious": jnp.asarray(malicious), "id": jnp.arange(spec.num_clients, dtype=jnp.int32)}
        return server, clients

    poison_key = attack.name.split("+")[-1] if attack.poison_data is not None else None
    client_update = _client_update_fn(model, float(lr), int(batch_size), int(local_epochs), poison_key,
                                      attack.poison_data)
    evaluate = _evaluate_fn(model)

    def server_update(server, uploads, weights, key):
        k_root, k_att, k_agg = jax.random.split(key, 3)
        fl = flattener(server["params"])
        w = fl.flatten(server["params"])
        g, is_mal = uploads["update"], uploads["malicious"]
        # ctx["malicious"] is the ground truth: only the reference rule "oracle" (a perfect detector) reads it
        ctx = {"ids": uploads["id"], "global_flat": w, "params": server["params"], "model_state": server["model_state"],
               "malicious": is_mal}
        if defense.needs_root:
            p0, _, _ = local(server["params"], server["model_state"], root, k_root)
            ctx["root_update"] = w - fl.flatten(p0)
        g = attack.apply(g, is_mal, k_att, ctx)
        out, agg_state = defense.apply(g, weights, k_agg, server["agg_state"], ctx)
        flagged = ~out.benign
        det = {"tp": jnp.sum(flagged & is_mal), "fp": jnp.sum(flagged & ~is_mal),
               "fn": jnp.sum(~flagged & is_mal), "tn": jnp.sum(~flagged & ~is_mal)}
        # coordinate-wise rules (median, trimmed mean): each row's share of coordinates inside the
        # averaged rank window, summed over attackers and over honest clients (NaN for other rules)
        window = coordinate_window(defense.name, g.shape[0], defense.f) if coordinate_diagnostic else None
        if window is None:
            coord = {"mal": jnp.float32(jnp.nan), "ben": jnp.float32(jnp.nan)}
        else:
            share = coordinate_kept_share(g, *window)
            coord = {"mal": jnp.sum(jnp.where(is_mal, share, 0.0)), "ben": jnp.sum(jnp.where(is_mal, 0.0, share))}
        params = fl.unflatten(w - server_lr * out.update)
        return {"params": params, "model_state": server["model_state"], "agg_state": agg_state,
                "det": jax.tree_util.tree_map(lambda a: a.astype(jnp.int32), det), "coord": coord}

    return Algorithm(init, broadcast, client_update, server_update, evaluate,
                     name=name or f"{attack.name}/{defense.name}")


_CACHE: dict = {}


def broadcast(server):
    return {"params": server["params"], "model_state": server["model_state"]}


def _client_update_fn(model, lr, batch_size, local_epochs, poison_key, poison_data):
    """One client function per (model, hyperparameters, data attack), shared by every algorithm
    built with them, so a driver that jits it once reuses the compiled code across attack x
    defense cells."""
    key = ("client", id(model), lr, batch_size, local_epochs, poison_key)
    if key in _CACHE:
        return _CACHE[key][1]
    local = LocalSGD(model, lr, batch_size, local_epochs)

    def client_update(bc, cs, data, key):
        # the training key is the engine's key itself, so honest clients draw FedAvg's batches
        k_poison, k_train = jax.random.fold_in(key, 7), key
        if poison_data is not None:
            px, py = poison_data(data["train_x"], data["train_y"], data["train_n"], k_poison)
            data = dict(data, train_x=jnp.where(cs["malicious"], px, data["train_x"]),
                        train_y=jnp.where(cs["malicious"], py, data["train_y"]))
        params, _, m = local(bc["params"], bc["model_state"], data, k_train)
        fl = flattener(bc["params"])
        upd = fl.flatten(bc["params"]) - fl.flatten(params)
        return cs, {"update": upd, "malicious": cs["malicious"], "id": cs["id"]}, m

    _CACHE[key] = (model, client_update)  # keeps the model alive so id() stays unique
    return client_update


def _evaluate_fn(model):
    key = ("eval", id(model))
    if key not in _CACHE:
        def evaluate(bc, cs, data, key):
            del cs, key
            return evaluate_on_test(model, bc["params"], bc["model_state"], data)
        _CACHE[key] = (model, evaluate)
    return _CACHE[key][1]


def _jit_cached(tag, fn, make):
    k = (tag, fn)
    if k not in _JIT:
        _JIT[k] = make(fn)
    return _JIT[k]


_JIT: dict = {}


def simulate(alg: Algorithm, data, rounds: int, *, seed: int = 0, join_ratio: float = 1.0, eval_every: int = 0,
             show_progress: bool = False) -> dict:
    """A lean driver for attack x defense matrices: the same round as :class:`jaxlab.fl.engine.Simulation`
    (select, client_update, server_update) but the vmapped client step and the evaluation are jitted
    once per client function and reused across cells, and clients are evaluated only every
    ``eval_every`` rounds (0: only at the end).

    Returns ``{'acc', 'history': [(round, acc)], 'det': summed tp/fp/fn/tn, 'fpr', 'fnr',
    'coord_keep_mal', 'coord_keep_ben', 'server_state'}``; ``acc`` is the global model's
    sample-weighted test accuracy over all clients; ``coord_keep_*`` (coordinate-wise rules only,
    NaN otherwise) is the mean, over rounds and attackers / honest clients, of the share of a
    client's coordinates inside the rule's averaged rank window."""
    from jaxlab.fl.algorithm import data_spec_of, tree_index, tree_set
    from jaxlab.utils.progress import progress

    if not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ValueError(f"rounds={rounds!r} must be a positive integer")
    if not 0.0 < join_ratio <= 1.0:
        raise ValueError(f"join_ratio={join_ratio!r} must be in (0, 1]")
    arrays = jax.tree_util.tree_map(jnp.asarray, data.arrays())
    spec = data_spec_of(data)
    n_all = spec.num_clients
    m = max(1, int(np.floor(n_all * join_ratio)))
    server, clients = alg.init(jax.random.PRNGKey(seed + 1_000_003), spec)
    train = _jit_cached("train", alg.client_update,
                        lambda f: jax.jit(jax.vmap(f, in_axes=(None, 0, 0, 0))))
    evaluate = _jit_cached("eval", alg.evaluate, lambda f: jax.jit(jax.vmap(f, in_axes=(None, 0, 0, 0))))
    server_step = jax.jit(alg.server_update)
    sizes = jnp.asarray(data.train_n, jnp.float32)

    def accuracy(server):
        ev = evaluate(broadcast(server), clients, arrays, jax.random.split(jax.random.PRNGKey(0), n_all))
        return float(np.asarray(ev["correct"]).sum() / max(np.asarray(ev["count"]).sum(), 1))

    det = {k: 0 for k in ("tp", "fp", "fn", "tn")}
    coord = {"mal": 0.0, "ben": 0.0}
    history = []
    for r in progress(range(rounds), total=rounds, desc=alg.name, disable=not show_progress):
        rkey = jax.random.fold_in(jax.random.PRNGKey(seed), r)
        k_sel, k_train, k_server = jax.random.split(rkey, 3)
        sel = jnp.arange(n_all) if m == n_all else jnp.sort(jax.random.permutation(k_sel, n_all)[:m])
        keys = jax.vmap(lambda i: jax.random.fold_in(k_train, i))(sel)
        sub_c, sub_d = tree_index(clients, sel), tree_index(arrays, sel)
        new_c, uploads, tm = train(broadcast(server), sub_c, sub_d, keys)
        clients = tree_set(clients, sel, new_c)
        w = sizes[sel] / sizes[sel].sum()
        server = server_step(server, uploads, w, k_server)
        for k in det:
            det[k] += int(server["det"][k])
        for k in coord:
            coord[k] += float(server["coord"][k]) if "coord" in server else float("nan")
        if eval_every and (r + 1) % eval_every == 0 and r + 1 < rounds:
            history.append((r + 1, accuracy(server)))
    acc = accuracy(server)
    history.append((rounds, acc))
    n_mal, n_ben = det["tp"] + det["fn"], det["fp"] + det["tn"]
    return {"acc": acc, "history": history, "det": det, **detection_rates(det),
            "coord_keep_mal": coord["mal"] / n_mal if n_mal else float("nan"),
            "coord_keep_ben": coord["ben"] / n_ben if n_ben else float("nan"), "server_state": server}


def backdoor_success(model, params, model_state, test_x, test_y, test_n, target: int = 0, trigger_size=None):
    """Attack success rate: fraction of valid test samples with ``y != target`` that the model
    classifies as ``target`` once the trigger is stamped. Arrays are stacked clients ``[C, N, ...]``."""
    x = add_trigger(jnp.asarray(test_x), trigger_size)
    c, nmax = test_y.shape
    logits = model.apply({"params": params, **model_state}, x.reshape((c * nmax,) + x.shape[2:]), train=False)
    pred = jnp.argmax(logits, -1).reshape(c, nmax)
    valid = (jnp.arange(nmax)[None, :] < jnp.asarray(test_n)[:, None]) & (jnp.asarray(test_y) != target)
    return float(jnp.sum((pred == target) & valid) / jnp.maximum(jnp.sum(valid), 1))
