"""The federated simulation engine: the server loop around an :class:`Algorithm`.

Each round ``r`` (PFLlib's order, ``serverbase.py``):

1. ``broadcast`` the server state; **evaluate every client** on its own test split with the
   broadcast plus its personal state (this is round ``r``'s accuracy: the model after ``r``
   rounds of training);
2. sample ``floor(N * join_ratio)`` clients without replacement;
3. ``client_update`` on the selected clients (their new personal states are written back);
4. ``server_update`` with weights ``n_i / sum_selected n_j`` (train-set sizes).

After the last round one more evaluation gives the final figures, so a run of R rounds logs R+1
evaluations (PFLlib's ``global_rounds + 1`` loop). Reported: sample-weighted accuracy
``sum correct / sum test samples``, the std of per-client accuracies, sample-weighted micro AUC
(and macro AUC), the mean local training loss of the round's clients [our choice: PFLlib re-evaluates
the train loss on every client's train set; we log the loss the clients measured while training],
and the best and last round.

All randomness is derived from ``(seed, round, client id)`` with ``fold_in``, so every executor and
a resumed run draw the same numbers. Checkpoints (orbax) hold server and client states after each
checkpointed round; a NaN loss stops the run before anything bad is saved and names the round and
clients.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.data.federated import FederatedData
from jaxlab.fl.algorithm import Algorithm, data_spec_of, tree_index, tree_set
from jaxlab.fl.executors import resolve_strategy, run_clients

__all__ = ["Simulation", "NonFiniteLossError", "summarize_history"]


class NonFiniteLossError(FloatingPointError):
    pass


def _select(key, num_clients: int, m: int):
    return jnp.sort(jax.random.permutation(key, num_clients)[:m])


def _client_keys(key, ids):
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)


def _reduce_eval(ev) -> dict:
    """Per-client metric arrays -> the engine's round figures (host floats)."""
    correct = np.asarray(ev["correct"], np.float64)
    count = np.asarray(ev["count"], np.float64)
    tot = max(count.sum(), 1.0)
    per_acc = correct / np.maximum(count, 1.0)
    out = {"acc": float(correct.sum() / tot), "acc_std": float(per_acc[count > 0].std()) if (count > 0).any() else 0.0,
           "test_loss": float(np.asarray(ev["loss_sum"], np.float64).sum() / tot)}
    for k in ("auc_micro", "auc_macro"):
        a = np.asarray(ev[k], np.float64)
        ok = ~np.isnan(a) & (count > 0)
        out[k] = float((a[ok] * count[ok]).sum() / max(count[ok].sum(), 1.0)) if ok.any() else float("nan")
    out["auc"] = out["auc_micro"]
    return out


def summarize_history(history: list[dict]) -> dict:
    """Best and last figures from the logged evaluation rows (``acc`` per round)."""
    accs = [h["acc"] for h in history]
    if not accs:
        return {}
    best = int(np.argmax(accs))
    last = history[-1]
    times = [h["seconds"] for h in history if h.get("seconds") is not None]
    return {"best_acc": accs[best], "best_round": history[best]["step"], "last_acc": last["acc"],
            "last_acc_std": last.get("acc_std"), "last_auc": last.get("auc"), "best_auc": max(h.get("auc", 0) for h in history),
            "rounds": last["step"], "seconds_per_round": float(np.mean(times)) if times else None}


class Simulation:
    """Runs ``algorithm`` on ``data``. ``strategy`` picks the client executor (see executors.py)."""

    def __init__(self, algorithm: Algorithm, data: FederatedData, *, join_ratio: float = 1.0,
                 strategy: str = "auto", seed: int = 0):
        if not (isinstance(join_ratio, (int, float)) and 0.0 < join_ratio <= 1.0):
            raise ValueError(f"join_ratio={join_ratio!r}: must be in (0, 1] (fraction of clients per round)")
        self.algorithm = algorithm
        self.data = data
        self.spec = data_spec_of(data)
        self.num_clients = data.num_clients
        self.m = max(1, int(np.floor(self.num_clients * join_ratio)))
        self.join_ratio = join_ratio
        self.strategy = resolve_strategy(strategy)
        self.seed = int(seed)
        self.arrays = jax.tree_util.tree_map(jnp.asarray, data.arrays())
        self._build()

    # -- compiled pieces ------------------------------------------------------------------------
    def _build(self):
        alg, strategy, N, m = self.algorithm, self.strategy, self.num_clients, self.m

        def eval_fn(bc, cd, key):
            cs, d = cd
            return alg.evaluate(bc, cs, d, key)

        def train_fn(bc, cd, key):
            cs, d = cd
            return alg.client_update(bc, cs, d, key)

        self._eval_fn, self._train_fn = eval_fn, train_fn

        def keys_of(rkey):
            k_sel, k_train, k_eval, k_server = jax.random.split(rkey, 4)
            return k_sel, k_train, k_eval, k_server

        def eval_all(server_state, client_states, data, rkey):
            bc = alg.broadcast(server_state)
            _, _, k_eval, _ = keys_of(rkey)
            return run_clients(eval_fn, bc, (client_states, data), _client_keys(k_eval, jnp.arange(N)), strategy)

        def aggregate(server_state, uploads, sel, data, rkey):
            _, _, _, k_server = keys_of(rkey)
            n = data["train_n"][sel].astype(jnp.float32)
            w = n / jnp.maximum(n.sum(), 1.0)
            return alg.server_update(server_state, uploads, w, k_server)

        def fused_round(server_state, client_states, data, rkey):
            ev = eval_all(server_state, client_states, data, rkey)
            k_sel, k_train, _, _ = keys_of(rkey)
            sel = _select(k_sel, N, m)
            bc = alg.broadcast(server_state)
            sub = (tree_index(client_states, sel), tree_index(data, sel))
            new_cs, uploads, tm = run_clients(train_fn, bc, sub, _client_keys(k_train, sel), strategy)
            client_states = tree_set(client_states, sel, new_cs)
            server_state = aggregate(server_state, uploads, sel, data, rkey)
            return server_state, client_states, ev, tm, sel

        self._eval_all = jax.jit(eval_all) if strategy != "sequential" else eval_all
        self._fused_round = jax.jit(fused_round)
        self._aggregate = jax.jit(aggregate)
        self._broadcast = jax.jit(alg.broadcast)
        self._select = jax.jit(lambda k: _select(keys_of(k)[0], N, m))
        self._keys = jax.jit(keys_of)

    def round_key(self, r: int):
        return jax.random.fold_in(jax.random.PRNGKey(self.seed), r)

    def init(self):
        """``(server_state, client_states)`` from the seed (identical for every executor)."""
        return self.algorithm.init(jax.random.PRNGKey(self.seed + 1_000_003), self.spec)

    def evaluate(self, server_state, client_states, r: int) -> dict:
        ev = self._eval_all(server_state, client_states, self.arrays, self.round_key(r))
        return jax.device_get(ev)

    def round(self, server_state, client_states, r: int):
        """One round: ``(server_state, client_states, eval_metrics, train_metrics, selected)``."""
        rkey = self.round_key(r)
        if self.strategy != "sequential":
            s, c, ev, tm, sel = self._fused_round(server_state, client_states, self.arrays, rkey)
            return s, c, jax.device_get(ev), jax.device_get(tm), np.asarray(sel)
        ev = self.evaluate(server_state, client_states, r)
        k_sel, k_train, _, _ = self._keys(rkey)
        sel = self._select(rkey)
        bc = self._broadcast(server_state)
        sub = (tree_index(client_states, sel), tree_index(self.arrays, sel))
        new_cs, uploads, tm = run_clients(self._train_fn, bc, sub, _client_keys(k_train, sel), "sequential")
        client_states = tree_set(client_states, sel, new_cs)
        server_state = self._aggregate(server_state, uploads, sel, self.arrays, rkey)
        return server_state, client_states, ev, jax.device_get(tm), np.asarray(sel)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, rounds: int, workdir=None, checkpoint_every: int = 1, show_progress: bool = True,
            callback: Callable | None = None, stop_after: int | None = None) -> dict:
        """Runs ``rounds`` rounds (plus the final evaluation) and returns the summary figures.

        With a :class:`jaxlab.utils.workdir.Workdir`, metrics are appended to ``metrics.jsonl``,
        state is checkpointed every ``checkpoint_every`` rounds, and an interrupted run resumes
        from its last checkpoint to the same numbers. ``stop_after`` ends the process-local loop
        early after that many rounds (used to test resumption).
        """
        from jaxlab.utils.progress import progress

        if not isinstance(rounds, (int, np.integer)) or rounds < 0:
            raise ValueError(f"rounds={rounds!r}: must be a non-negative integer")
        server_state, client_states = self.init()
        start = 0
        ckpt = None
        history: list[dict] = []
        if workdir is not None:
            from jaxlab.utils.checkpoint import Checkpointer

            ckpt = Checkpointer(workdir.checkpoint_dir)
            step, restored = ckpt.restore({"server": server_state, "clients": client_states})
            if step is not None:
                start = step
                server_state, client_states = restored["server"], restored["clients"]
                workdir.truncate_metrics(start - 1)
                history = [h for h in workdir.read_metrics() if "acc" in h]
        bar = progress(range(start, rounds), total=rounds, initial=start, desc=self.algorithm.name,
                       disable=not show_progress)
        done_here = 0
        for r in bar:
            t0 = time.perf_counter()
            new_s, new_c, ev, tm, sel = self.round(server_state, client_states, r)
            self._check_finite(tm, sel, r, last_good=(ckpt.latest_step() if ckpt is not None else None))
            server_state, client_states = new_s, new_c
            row = {"step": r, **_reduce_eval(ev), "train_loss": float(np.mean(np.asarray(tm["loss"]))),
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            if workdir is not None:
                workdir.log(**row)
                if (r + 1) % checkpoint_every == 0 or r + 1 == rounds:
                    ckpt.save(r + 1, {"server": server_state, "clients": client_states})
            if callback is not None:
                callback(r, row, server_state, client_states)
            bar.set_postfix(acc=f"{row['acc']:.4f}", s_per_round=f"{row['seconds']:.2f}")
            done_here += 1
            if stop_after is not None and done_here >= stop_after:
                bar.close()
                return {"stopped_at_round": r + 1}
        bar.close()
        t0 = time.perf_counter()
        final = {"step": rounds, **_reduce_eval(self.evaluate(server_state, client_states, rounds)),
                 "seconds": None}
        if not history or history[-1]["step"] != rounds:
            history.append(final)
            if workdir is not None:
                workdir.log(**final)
        self.final_state = (server_state, client_states)
        return summarize_history(history)

    def _check_finite(self, tm, sel, r, last_good):
        loss = np.asarray(tm["loss"])
        bad = ~np.isfinite(loss)
        if bad.any():
            clients = [int(c) for c in np.asarray(sel)[bad]]
            where = (f"; the last good checkpoint is after round {last_good}" if last_good is not None
                     else "")
            raise NonFiniteLossError(f"non-finite training loss in round {r} at client(s) {clients}{where}. "
                                     "Lower the learning rate or check those clients' data.")
